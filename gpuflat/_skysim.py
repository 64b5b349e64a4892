"""A simulated night-sky sequence for sky flats (``gpuflat simulate --sky``): dithered
frames of a star field through the optical flat, and the true flat they used.

What a sky flat has to cope with, and the simulation has:

* a low sky (400-900 ADU, drifting over the night) and so a noisy ratio per frame;
* stars whose numbers rise steeply to the faint end (cumulative counts N(>F) ~ F^-0.75),
  with Moffat profiles (beta = 3: wings well beyond the core) under a seeing that changes
  from frame to frame (FWHM 2.2-3.6 pixels);
* a dither: the telescope points a few tens of pixels elsewhere for every frame, so a star
  lands on other pixels each time; the brightest stars saturate (``SATURATE``, clipped);
* photon and read noise and cosmic rays (the night simulator's detector, bias and dark
  already subtracted: the frames are ready to combine).

``cover=0`` writes the same night without its stars (the same sky, noise draws and
cosmic rays), the reference a star-masked master is measured against. The true flat is
written beside the frames as ``trueflat-<filter>.fits``, ``IMAGETYP = 'TRUEFLAT'`` and
``COMBINED = T``, so that no selection ever takes it for a frame.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.io import fits

from ._atomic import commit
from ._instrument import (
    GAIN,
    READ_NOISE,
    _add_cosmics,
    _check_seed,
    _check_shape,
    _rng,
    _scaled_count,
    flat_field_truth,
)

__all__ = ["simulate_sky"]

#: the level (ADU) at which the simulated converter saturates (``SATURATE``)
SATURATION = 60000.0
SKY_RANGE = (400.0, 900.0)
_BETA = 3.0  # Moffat index
_SLOPE = 0.75  # cumulative number counts N(>F) ~ F^-slope
_TAG_FIELD, _TAG_DITHER, _TAG_FRAME, _TAG_SEEING = 31, 32, 33, 34
_START = _dt.datetime(2024, 3, 15, 0, 30, 0)
_EXPTIME = 60.0
_MJD_ZERO = _dt.datetime(1858, 11, 17)


def simulate_sky(
    outdir,
    *,
    shape=(512, 768),
    n_frames: int = 7,
    filter_name: str = "V",
    cover: float = 0.05,
    dither: float | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], object] | None = None,
) -> list[Path]:
    """Write a dithered night-sky sequence (``IMAGETYP = 'OBJECT'``) and its true flat.

    Parameters
    ----------
    outdir : str or os.PathLike
        Directory for the files; created if missing.
    shape : (int, int)
        ``(ny, nx)`` of every frame.
    n_frames : int
        Number of sky frames, ``sky-<filter>-001.fits`` ...
    filter_name : str
        ``FILTER`` of the frames; the optical flat is :func:`gpuflat._simulate.flat_field_truth`'s
        for it.
    cover : float
        Fraction of each frame's pixels where stars add more than the sky's noise (0 to
        0.3; about 0.05 by default, a crowded field at low galactic latitude). 0: the
        same night without stars (the same sky, seeing, noise draws and cosmic rays).
    dither : float, optional
        Largest pointing offset in pixels (default 8% of the smaller side).
    seed : int
    overwrite : bool
        Replace existing files; otherwise a ``FileExistsError`` before anything is written.
    progress : callable(done, total), optional

    Returns
    -------
    list of pathlib.Path
        The frames in time order, then the true flat ``trueflat-<filter>.fits``.

    Each frame's header records its sky level (``SKYLEVEL``), seeing (``FWHM``), pointing
    offset (``DITHERX``, ``DITHERY``), the fraction of its pixels covered by stars
    (``STARCOV``) and of its pixels saturated (``SATFRAC``), and ``SATURATE``.
    """
    ny, nx = _check_shape(shape)
    seed = _check_seed(seed)
    n_frames = int(n_frames)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if not 0 <= cover <= 0.3:
        raise ValueError(f"cover must be between 0 and 0.3, got {cover!r}")
    reach = _reach(ny, nx, dither)
    if not 0 <= reach <= min(ny, nx) / 2:
        raise ValueError(f"dither must be between 0 and half the smaller side, got {dither!r}")
    outdir = Path(outdir)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in filter_name.replace("'", "p"))
    paths = [outdir / f"sky-{safe}-{i + 1:03d}.fits" for i in range(n_frames)]
    truth_path = outdir / f"trueflat-{safe}.fits"
    if not overwrite:
        for path in [*paths, truth_path]:
            if os.path.lexists(path):
                raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace)")
    outdir.mkdir(parents=True, exist_ok=True)

    flat = flat_field_truth((ny, nx), filter_name, seed)
    night = _Night(seed, ny, nx, n_frames, cover, reach)
    offsets, fwhms, skies = night.offsets, night.fwhms, night.skies

    when = _START
    total = n_frames + 1
    for i, path in enumerate(paths):
        rng = _rng(seed, _TAG_FRAME, i + 1)
        sky = float(skies[i])
        signal = np.full((ny, nx), sky, np.float32)
        cover_i = 0.0
        if night.field is not None:
            light = night.light(i)
            cover_i = float(np.mean(light > _sky_noise(sky)))
            signal += light
            del light
        signal *= flat
        noise = np.sqrt(signal / np.float32(GAIN) + np.float32(READ_NOISE**2))
        noise *= rng.standard_normal((ny, nx), dtype=np.float32)
        signal += noise
        del noise
        _add_cosmics(rng, signal, _scaled_count(300.0, ny, nx))
        np.minimum(signal, np.float32(SATURATION), out=signal)
        saturated = float(np.mean(signal >= SATURATION))
        header = _header(filter_name, when, seed, sky, fwhms[i], offsets[i], cover_i, saturated)
        header["HISTORY"] = "bias and dark subtracted (simulated): ready to combine"
        commit(path, fits.HDUList([fits.PrimaryHDU(signal, header)]).writeto, overwrite=True)
        when += _dt.timedelta(seconds=_EXPTIME + 30.0)
        if progress is not None:
            progress(i + 1, total)
    header = fits.Header()
    header["IMAGETYP"] = ("TRUEFLAT", "the simulation's optical flat, not a frame")
    header["FILTER"] = (filter_name, "filter name")
    header["COMBINED"] = (True, "never an input: the truth to compare with")
    header["SIMSEED"] = (seed, "gpuflat simulation seed")
    header["BUNIT"] = ("", "dimensionless, as a normalised master")  # CCDData.read takes it
    commit(truth_path, fits.HDUList([fits.PrimaryHDU(flat, header)]).writeto, overwrite=True)
    if progress is not None:
        progress(total, total)
    return [*paths, truth_path]


def star_light(shape=(512, 768), *, n_frames: int = 7, cover: float = 0.05,
               dither: float | None = None, seed: int = 0):  # fmt: skip
    """The noise-free star light of every frame of the night :func:`simulate_sky` writes
    with these arguments, in units of the frame's sky noise (before the flat), frame by
    frame: what a perfect source mask would know (``bench/sky.py``'s floor)."""
    ny, nx = _check_shape(shape)
    night = _Night(_check_seed(seed), ny, nx, int(n_frames), cover, _reach(ny, nx, dither))
    for i in range(int(n_frames)):
        if night.field is None:
            yield np.zeros((ny, nx), np.float32)
        else:
            yield night.light(i) / np.float32(_sky_noise(float(night.skies[i])))


def _reach(ny, nx, dither) -> float:
    """The largest pointing offset: ``dither``, or 8% of the smaller side."""
    return 0.08 * min(ny, nx) if dither is None else float(dither)


class _Night:
    """A night's pointings, seeing, sky levels and star field (all drawn from ``seed``)."""

    def __init__(self, seed, ny, nx, n_frames, cover, reach):
        self.shape, self.reach = (ny, nx), reach
        self.offsets = _rng(seed, _TAG_DITHER).uniform(-reach, reach, (n_frames, 2))
        self.offsets[0] = 0.0
        self.fwhms = _rng(seed, _TAG_SEEING).uniform(2.2, 3.6, n_frames)
        t = np.linspace(0.0, 1.0, n_frames)
        low, high = SKY_RANGE
        self.skies = low + (high - low) * (0.5 + 0.5 * np.cos(np.pi * (t + 0.2)))
        self.skies *= _rng(seed, _TAG_FRAME, 0).uniform(0.97, 1.03, n_frames)
        self.field = None
        if cover:
            self.field = _field(seed, ny, nx, reach, cover, self.fwhms.mean(), self.skies.min())

    def light(self, i) -> np.ndarray:
        """Frame ``i``'s star light (ADU, before the flat)."""
        light = np.zeros(self.shape, np.float32)
        ys, xs, fluxes = self.field
        dy, dx = self.offsets[i]
        _add_moffat(light, ys - self.reach - dy, xs - self.reach - dx, fluxes, self.fwhms[i])
        return light


def _sky_noise(sky: float) -> float:
    """The sky's noise per pixel (ADU)."""
    return math.sqrt(sky / GAIN + READ_NOISE**2)


def _field(seed, ny, nx, reach, cover, fwhm, sky):
    """The star field (rows, columns in the field's frame, total fluxes in ADU), larger than
    the detector by the dither's reach, with as many stars as give about ``cover`` of a
    frame's pixels more than the sky's noise (estimated from each star's area above it)."""
    rng = _rng(seed, _TAG_FIELD)
    h, w = ny + 2 * reach, nx + 2 * reach
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / _BETA) - 1))
    unit = math.pi * alpha**2 / (_BETA - 1)  # flux of a Moffat of peak 1
    level = _sky_noise(sky)
    fmin = 0.5 * level * unit  # the faintest: half the noise at the peak
    pool = 200_000
    u = rng.uniform(0.0, 1.0, pool)
    fluxes = fmin * u ** (-1 / _SLOPE)
    fluxes = np.minimum(fluxes, 3e7)  # the brightest: peaks of a few hundred thousand ADU
    # area above the noise of a star of peak P: pi alpha^2 ((P / level)^(1/beta) - 1)
    peaks = fluxes / unit
    areas = math.pi * alpha**2 * np.clip((peaks / level) ** (1 / _BETA) - 1, 0, None)
    want = cover * h * w * 1.1  # overlaps and the field's margin
    n = int(np.searchsorted(np.cumsum(areas), want)) + 1 if cover > 0 else 0
    n = min(n, pool)
    ys, xs = rng.uniform(0, h, pool)[:n], rng.uniform(0, w, pool)[:n]
    return ys, xs, fluxes[:n]


def _add_moffat(image, ys, xs, fluxes, fwhm) -> None:
    """Add Moffat stars (beta 3, ``fwhm`` pixels; total ``fluxes`` in ADU) to ``image``
    in place, each drawn out to where it falls below 0.05 ADU, in batches of one stamp size."""
    ny, nx = image.shape
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / _BETA) - 1))
    peaks = fluxes * (_BETA - 1) / (math.pi * alpha**2)
    reach = alpha * np.sqrt(np.clip((peaks / 0.05) ** (1 / _BETA) - 1, 1, None))
    inside = (ys > -reach) & (ys < ny + reach) & (xs > -reach) & (xs < nx + reach)
    sizes = np.array([4, 8, 16, 32, 64, 128])
    kind = np.minimum(np.searchsorted(sizes, reach), len(sizes) - 1)
    flat = image.reshape(-1)
    for k, half in enumerate(sizes):
        pick = np.flatnonzero(inside & (kind == k))
        for start in range(0, pick.size, max(1, 2_000_000 // (2 * half + 1) ** 2)):
            sel = pick[start : start + max(1, 2_000_000 // (2 * half + 1) ** 2)]
            off = np.arange(-half, half + 1)
            iy = np.floor(ys[sel]).astype(np.int64)[:, None, None] + off[None, :, None]
            ix = np.floor(xs[sel]).astype(np.int64)[:, None, None] + off[None, None, :]
            dy = iy - ys[sel][:, None, None]
            dx = ix - xs[sel][:, None, None]
            r2 = (dy * dy + dx * dx) / (alpha * alpha)
            vals = peaks[sel][:, None, None] * (1 + r2) ** -_BETA
            iy, ix = np.broadcast_arrays(iy, ix)
            ok = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
            np.add.at(flat, iy[ok] * nx + ix[ok], vals[ok].astype(image.dtype))


def _header(filter_name, when, seed, sky, fwhm, offset, cover, saturated) -> fits.Header:
    hdr = fits.Header()
    hdr["IMAGETYP"] = ("OBJECT", "type of image")
    hdr["OBJECT"] = ("sim-sky-field", "target")
    hdr["FILTER"] = (filter_name, "filter name")
    hdr["EXPTIME"] = (_EXPTIME, "[s] exposure time")
    hdr["DATE-OBS"] = (when.isoformat(timespec="milliseconds"), "start of exposure (UTC)")
    hdr["MJD-OBS"] = (round((when - _MJD_ZERO) / _dt.timedelta(days=1), 8), "[d] MJD of DATE-OBS")
    hdr["INSTRUME"] = ("gpuflat-sim", "simulated by gpuflat._skysim")
    hdr["BUNIT"] = ("adu", "physical unit of the data")
    hdr["GAIN"] = (GAIN, "[e-/adu] detector gain")
    hdr["RDNOISE"] = (READ_NOISE, "[adu] read noise")
    hdr["SATURATE"] = (SATURATION, "[adu] the converter saturates here")
    hdr["SKYLEVEL"] = (round(sky, 2), "[adu] sky level through a median-1 flat")
    hdr["FWHM"] = (round(float(fwhm), 3), "[pixel] seeing")
    hdr["DITHERY"] = (round(float(offset[0]), 2), "[pixel] pointing offset, rows")
    hdr["DITHERX"] = (round(float(offset[1]), 2), "[pixel] pointing offset, columns")
    hdr["STARCOV"] = (round(cover, 5), "fraction of pixels with stars above the noise")
    hdr["SATFRAC"] = (round(saturated, 7), "fraction of pixels saturated")
    hdr["SIMSEED"] = (seed, "gpuflat simulation seed")
    return hdr
