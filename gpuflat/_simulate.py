"""A simulated observing night: raw FITS frames for testing and demonstrating flat combination.

The night follows the two situations of the astropy CCD reduction guide's "Combining flats"
notebook:

* dome flats (``IMAGETYP = 'flatfield'``) in the filters ``g''`` and ``r''`` whose level drifts
  by a few percent over the sequence (the lamp warming up or cooling down);
* twilight flats (``IMAGETYP = 'FLAT'``) in ``V`` whose level falls several-fold, exponentially,
  as the sky darkens, with faint stars at different positions in every frame.

Every flat is the product of a smooth illumination level and the optical flat of its filter
(vignetting, dust donuts and pixel-response non-uniformity, see :func:`flat_field_truth`), on
top of a structured bias, dark current, hot columns, photon and read noise and cosmic rays.
Bias, dark and light frames are written too, so that a flat selector has something to ignore.

All randomness comes from :func:`numpy.random.default_rng`: the fixed parts of the instrument
(optical flat, bias pattern, hot columns) from streams keyed on ``seed`` alone, the per-frame
parts (noise, stars, cosmic rays, level jitter) from ``np.random.default_rng(seed)`` drawn in
file order. The same arguments therefore always produce the same files.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from ._atomic import commit
from ._instrument import (
    BIAS_LEVEL,
    DARK_RATE,
    GAIN,
    READ_NOISE,
    _add_stars,
    _check_seed,
    _check_shape,
    _detector,
    _expose,
    _rng,
    _scaled_count,
    detector_defects,
    flat_field_truth,
)

__all__ = ["detector_defects", "flat_field_truth", "simulate_night"]

INSTRUMENT = "gpuflat-sim"
#: ``mef=K``: the gains (e-/ADU) of detectors CCD1, CCD2, ... (repeated beyond eight), so that
#: the same illumination gives each detector its own level in ADU.
DETECTOR_GAINS = (1.5, 1.3, 1.7, 1.4, 1.6, 1.2, 1.8, 1.45)
# Dome flat sequences: filter, first level (ADU), relative drift over the sequence, exptime (s).
_DOME_SEQUENCES = (("g''", 24000.0, -0.035, 12.0), ("r''", 27000.0, 0.03, 8.0))
_TWILIGHT_FILTER = "V"
_N_BIAS = 3
_N_DARK = 2
_N_LIGHT = 2
_DARK_EXPTIME = 60.0
_LIGHT_EXPTIME = 120.0
_READOUT_S = 25.0
_NIGHT_START = _dt.datetime(2024, 3, 14, 22, 0, 0)
#: ``raw=True``: columns of the overscan strip, right of the image area
OVERSCAN_COLS = 32
_TAG_READOUT = 6  # the stream of the raw readout (bias drift), apart from the night's
_MJD_ZERO = _dt.datetime(1858, 11, 17)


# --------------------------------------------------------------------------------------------
# The night
# --------------------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name.replace("'", "p"))


@dataclass
class _Plan:
    filename: str
    imagetyp: str
    exptime: float
    filter: str | None = None
    level: float = 0.0  # illumination level (ADU) through a median-1 flat
    stars: str | None = None  # None, "twilight" or "field"
    obj: str | None = None


def _plan_night(rng: np.random.Generator, n_dome: int, n_twilight: int) -> list[_Plan]:
    plans = [_Plan(f"bias-{i + 1:03d}.fits", "BIAS", 0.0) for i in range(_N_BIAS)]
    plans += [_Plan(f"dark-{i + 1:03d}.fits", "DARK", _DARK_EXPTIME) for i in range(_N_DARK)]
    # Dome flats: the lamp drifts by a few percent over the sequence, plus a small jitter.
    for filt, level0, drift, exptime in _DOME_SEQUENCES:
        for i in range(n_dome):
            t = i / (n_dome - 1) if n_dome > 1 else 0.0
            level = level0 * (1.0 + drift * t) * (1.0 + rng.normal(0.0, 0.002))
            name = f"flat-{_safe(filt)}-{i + 1:03d}.fits"
            plans.append(_Plan(name, "flatfield", exptime, filt, level))
    # Twilight flats: the sky falls exponentially from 40000 to 6000 ADU while the observer
    # lengthens the exposures a little.
    for i in range(n_twilight):
        t = i / (n_twilight - 1) if n_twilight > 1 else 0.0
        level = 40000.0 * (6000.0 / 40000.0) ** t
        exptime = round(2.0 * 1.3**i, 1)
        name = f"twiflat-{_safe(_TWILIGHT_FILTER)}-{i + 1:03d}.fits"
        plans.append(_Plan(name, "FLAT", exptime, _TWILIGHT_FILTER, level, "twilight"))
    light = ("LIGHT", _LIGHT_EXPTIME, _TWILIGHT_FILTER, 300.0, "field", "sim-field")
    plans += [_Plan(f"light-{i + 1:03d}.fits", *light) for i in range(_N_LIGHT)]
    return plans


def _header(plan: _Plan, date_obs: _dt.datetime, seed: int) -> fits.Header:
    hdr = fits.Header()
    hdr["IMAGETYP"] = (plan.imagetyp, "type of image")
    if plan.filter is not None:
        hdr["FILTER"] = (plan.filter, "filter name")
    hdr["EXPTIME"] = (float(plan.exptime), "[s] exposure time")
    hdr["DATE-OBS"] = (date_obs.isoformat(timespec="milliseconds"), "start of exposure (UTC)")
    # MJD-OBS as well, so that astropy.wcs (run by CCDData.read) has nothing to "fix" and warn.
    mjd = (date_obs - _MJD_ZERO) / _dt.timedelta(days=1)
    hdr["MJD-OBS"] = (round(mjd, 8), "[d] modified Julian date of DATE-OBS")
    hdr["INSTRUME"] = (INSTRUMENT, "simulated by gpuflat._simulate")
    hdr["BUNIT"] = ("adu", "physical unit of the data")
    hdr["XBINNING"] = (1, "binning in x")
    hdr["YBINNING"] = (1, "binning in y")
    if plan.obj is not None:
        hdr["OBJECT"] = (plan.obj, "target")
    hdr["GAIN"] = (GAIN, "[e-/adu] detector gain")
    # in electrons, as --rdnoise and IRAF's rdnoise take it
    hdr["RDNOISE"] = (READ_NOISE * GAIN, "[e-] read noise")
    hdr["SIMSEED"] = (seed, "gpuflat simulation seed")
    return hdr


def _write_atomic(path: Path, data, header: fits.Header) -> None:
    """``data``: one image (a primary HDU), or a list of (EXTNAME, image, header) extensions
    after a header-only primary HDU."""
    if isinstance(data, list):
        hdul = fits.HDUList(
            [fits.PrimaryHDU(header=header)]
            + [fits.ImageHDU(d, h, name=name) for name, d, h in data]
        )
    else:
        hdul = fits.HDUList([fits.PrimaryHDU(data=data, header=header)])
    commit(path, hdul.writeto, overwrite=True)


def simulate_night(
    outdir,
    *,
    shape=(512, 768),
    n_dome: int = 5,
    n_twilight: int = 7,
    dtype="float32",
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], object] | None = None,
    mef: int = 0,
    raw: bool = False,
) -> list[Path]:
    """Write a realistic simulated night of raw CCD frames as FITS files.

    Parameters
    ----------
    outdir : str or os.PathLike
        Directory for the files; created if missing.
    shape : tuple of int, optional
        ``(ny, nx)`` of every frame, rows then columns.
    n_dome : int, optional
        Number of dome flats per filter (``g''`` and ``r''``), ``IMAGETYP = 'flatfield'``,
        levels about 24000 and 27000 ADU drifting by about -3.5 % and +3 % over the sequence.
    n_twilight : int, optional
        Number of ``V`` twilight flats, ``IMAGETYP = 'FLAT'``, whose level falls exponentially
        from 40000 to 6000 ADU while the exposure time grows; faint stars at random positions
        differ in every frame.
    dtype : {"float32", "uint16"}, optional
        Data type on disk. ``"float32"`` is stored as ``BITPIX = -32``; ``"uint16"`` is rounded,
        clipped to 0..65535 and stored as ``BITPIX = 16`` with ``BZERO = 32768``.
    seed : int, optional
        Seed; the same arguments always write the same data.
    overwrite : bool, optional
        Replace existing files. Otherwise a :class:`FileExistsError` naming the first existing
        file is raised before anything is written.
    progress : callable, optional
        ``progress(done, total)`` is called after each file is written.
    mef : int, optional
        ``K > 0`` writes mosaics: every file has a header-only primary HDU (the keywords
        below) and ``K`` image extensions ``CCD1`` ... ``CCDK``, one per detector, each with
        its own bias pattern and hot columns and its own gain (:data:`DETECTOR_GAINS`, in
        the extension's ``GAIN``), so the same illumination gives each detector a different
        level in ADU (what ``scale_per='exposure'`` keeps). 0 (default): single images.
    raw : bool, optional
        Raw frames as a camera writes them: :data:`OVERSCAN_COLS` overscan columns right of
        the image area (``BIASSEC``; ``TRIMSEC`` = ``DATASEC`` = the image area), and a bias
        level that drifts from frame to frame and along the rows, seen by the image area
        and the overscan alike; plus the noiseless masters that calibrate them,
        ``master-bias.fits`` (the bias pattern left after the overscan is subtracted) and
        ``master-dark.fits`` (60 s of dark current and hot columns, bias-free), of the
        trimmed shape (multi-extension with ``mef``), listed last. The other files are the
        same as without it, but for the strip and the drift.

    Returns
    -------
    list of pathlib.Path
        The files written, in time order: 3 biases (``bias-001.fits``...), 2 darks
        (``dark-001.fits``..., 60 s), the dome flats (``flat-gpp-001.fits``...,
        ``flat-rpp-001.fits``...), the twilight flats (``twiflat-V-001.fits``...) and 2 light
        frames (``light-001.fits``..., ``OBJECT = 'sim-field'``, filter ``V``).

    Notes
    -----
    Every file has one primary HDU with ``IMAGETYP``, ``EXPTIME`` (float seconds),
    ``DATE-OBS`` (ISO, increasing), ``INSTRUME = 'gpuflat-sim'``, ``BUNIT = 'adu'``,
    ``XBINNING = YBINNING = 1``, ``GAIN``, ``RDNOISE`` and ``SIMSEED``, plus ``FILTER`` for
    flats and lights and ``OBJECT`` for lights. Files are written atomically (a temporary name in
    ``outdir``, then :func:`os.replace`).

    A raw frame is ``bias + level * flat + dark + hot columns + noise + cosmic rays``, where
    ``flat`` is :func:`flat_field_truth` for the frame's filter, the bias pattern and hot
    columns are given by :func:`detector_defects`, the noise is the normal approximation of
    Poisson noise for a gain of 1.5 e-/ADU plus 5 ADU read noise, and a few hundred cosmic-ray
    hits (scaled with the detector area) land on every frame.

    Examples
    --------
    >>> paths = simulate_night("night", shape=(64, 96))  # doctest: +SKIP
    >>> [p.name for p in paths][:3]  # doctest: +SKIP
    ['bias-001.fits', 'bias-002.fits', 'bias-003.fits']
    """
    ny, nx = _check_shape(shape)
    seed = _check_seed(seed)
    n_dome, n_twilight = int(n_dome), int(n_twilight)
    if n_dome < 0 or n_twilight < 0:
        raise ValueError("n_dome and n_twilight must be non-negative")
    try:
        out_dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be 'float32' or 'uint16', got {dtype!r}") from None
    if out_dtype not in (np.dtype(np.float32), np.dtype(np.uint16)):
        raise ValueError(f"dtype must be 'float32' or 'uint16', got {dtype!r}")
    if isinstance(mef, bool) or not isinstance(mef, (int, np.integer)) or mef < 0:
        raise ValueError(f"mef must be a non-negative integer (0: single images), got {mef!r}")

    outdir = Path(outdir)
    rng = np.random.default_rng(seed)
    plans = _plan_night(rng, n_dome, n_twilight)
    paths = [outdir / p.filename for p in plans]
    masters = [outdir / "master-bias.fits", outdir / "master-dark.fits"] if raw else []
    paths += masters
    if not overwrite:
        for path in paths:
            if os.path.lexists(path):
                raise FileExistsError(
                    f"{path}: already exists (--overwrite, or overwrite=True, replaces it)"
                )
    outdir.mkdir(parents=True, exist_ok=True)

    dets = (
        [_detector(ny, nx, seed)] if not mef else [_detector(ny, nx, seed, k) for k in range(mef)]
    )
    gains = [GAIN] if not mef else [DETECTOR_GAINS[k % len(DETECTOR_GAINS)] for k in range(mef)]
    flats: dict[str, np.ndarray] = {}
    n_cosmics = _scaled_count(300.0, ny, nx)
    star_sigma = 1.6
    # The light frames all point at one star field, dithered by a few pixels.
    n_field = round(_scaled_count(150.0, ny, nx))
    field_y = rng.uniform(0, ny, n_field)
    field_x = rng.uniform(0, nx, n_field)
    field_peak = np.exp(rng.uniform(np.log(50.0), np.log(30000.0), n_field))

    when = _NIGHT_START
    total = len(paths)
    for done, (plan, path) in enumerate(zip(plans, paths, strict=False), start=1):
        images = []
        for det, gain in zip(dets, gains, strict=True):
            signal = None
            if plan.filter is not None:
                flat = flats.get(plan.filter)
                if flat is None:
                    flat = flats[plan.filter] = flat_field_truth((ny, nx), plan.filter, seed)
                # the same photons give level * GAIN / gain ADU on a detector of this gain
                level = plan.level if gain == GAIN else plan.level * GAIN / gain
                signal = np.full((ny, nx), level, np.float32)
                if plan.stars == "twilight":
                    n = int(rng.poisson(_scaled_count(25.0, ny, nx)))
                    ys, xs = rng.uniform(0, ny, n), rng.uniform(0, nx, n)
                    peaks = np.exp(rng.uniform(np.log(150.0), np.log(3000.0), n))
                    _add_stars(signal, ys, xs, peaks, star_sigma)
                elif plan.stars == "field":
                    sy, sx = rng.uniform(-4.0, 4.0, 2)
                    _add_stars(signal, field_y + sy, field_x + sx, field_peak, star_sigma)
                signal *= flat
            data = _expose(
                rng, det, signal=signal, exptime=plan.exptime, cosmics=n_cosmics, gain=gain
            )
            if raw:
                data = _readout(data, seed, done, len(images))
            if out_dtype == np.uint16:
                np.rint(data, out=data)
                np.clip(data, 0, 65535, out=data)
                data = data.astype(np.uint16)
            images.append(data)
        header = _header(plan, when, seed)
        if raw and not mef:
            _add_sections(header, ny, nx)
        if mef:
            del header["GAIN"], header["RDNOISE"]  # per detector
            exts = []
            for k, (data, gain) in enumerate(zip(images, gains, strict=True), start=1):
                ext_header = fits.Header()
                if raw:
                    _add_sections(ext_header, ny, nx)
                ext_header["GAIN"] = (gain, "[e-/adu] gain of this detector")
                ext_header["RDNOISE"] = (READ_NOISE * gain, "[e-] read noise of this detector")
                ext_header["BUNIT"] = ("adu", "physical unit of the data")
                exts.append((f"CCD{k}", data, ext_header))
            _write_atomic(path, exts, header)
        else:
            _write_atomic(path, images[0], header)
        when += _dt.timedelta(seconds=plan.exptime + _READOUT_S)
        if progress is not None:
            progress(done, total)
    for k, path in enumerate(masters):
        _write_master(path, dets, "dark" if k else "bias", mef, seed)
        if progress is not None:
            progress(len(plans) + k + 1, total)
    return paths


def _add_sections(header, ny, nx):
    header["BIASSEC"] = (f"[{nx + 1}:{nx + OVERSCAN_COLS},1:{ny}]", "overscan strip")
    header["TRIMSEC"] = (f"[1:{nx},1:{ny}]", "image area")
    header["DATASEC"] = (f"[1:{nx},1:{ny}]", "image area")


def _readout(data, seed, index, det_index):
    """A raw readout of ``data`` (the image area, float32): a bias drift (an offset of the
    frame and a slow wave along the rows) added to every row, and the overscan strip: the
    bias level plus that drift and read noise."""
    rng = _rng(seed, _TAG_READOUT, index, det_index)
    ny, nx = data.shape
    rows = np.arange(ny) / ny
    drift = rng.normal(0.0, 4.0) + 3.0 * np.sin(2 * np.pi * (2 * rows + rng.uniform()))
    drift = drift.astype(np.float32)
    out = np.empty((ny, nx + OVERSCAN_COLS), np.float32)
    out[:, :nx] = data + drift[:, None]
    noise = rng.standard_normal((ny, OVERSCAN_COLS), dtype=np.float32) * np.float32(READ_NOISE)
    out[:, nx:] = np.float32(BIAS_LEVEL) + drift[:, None] + noise
    return out


def _write_master(path, dets, kind, mef, seed):
    """A noiseless master of the trimmed shape: the bias pattern left after the overscan
    (the bias level) is subtracted, or ``_DARK_EXPTIME`` s of dark current and hot
    columns; one image, or one extension per detector."""
    images = []
    for det in dets:
        if kind == "bias":
            images.append(det.bias - np.float32(BIAS_LEVEL))
            continue
        dark = np.full(det.bias.shape, DARK_RATE * _DARK_EXPTIME, np.float32)
        for col, row0, rate in det.hot:
            dark[row0:, col] += np.float32(rate * _DARK_EXPTIME)
        images.append(dark)
    header = fits.Header()
    header["IMAGETYP"] = ("BIAS" if kind == "bias" else "DARK", "type of image")
    header["EXPTIME"] = (0.0 if kind == "bias" else _DARK_EXPTIME, "[s] exposure time")
    header["COMBINED"] = (True, "a master (noiseless, simulated)")
    header["INSTRUME"] = (INSTRUMENT, "simulated by gpuflat._simulate")
    header["BUNIT"] = ("adu", "physical unit of the data")
    header["SIMSEED"] = (seed, "gpuflat simulation seed")
    if mef:
        _write_atomic(path, [(f"CCD{k}", d, None) for k, d in enumerate(images, 1)], header)
    else:
        _write_atomic(path, images[0], header)
