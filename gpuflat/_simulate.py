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
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from ._atomic import commit

__all__ = ["detector_defects", "flat_field_truth", "simulate_night"]

#: Detector and instrument constants of the simulation.
GAIN = 1.5  # e-/ADU
READ_NOISE = 5.0  # ADU
BIAS_LEVEL = 1000.0  # ADU
DARK_RATE = 0.02  # ADU/s, everywhere
INSTRUMENT = "gpuflat-sim"
#: ``mef=K``: the gains (e-/ADU) of detectors CCD1, CCD2, ... (repeated beyond eight), so that
#: the same illumination gives each detector its own level in ADU.
DETECTOR_GAINS = (1.5, 1.3, 1.7, 1.4, 1.6, 1.2, 1.8, 1.45)

# Dome flat sequences: filter, first level (ADU), relative drift over the sequence, exptime (s).
_DOME_SEQUENCES = (("g''", 24000.0, -0.035, 12.0), ("r''", 27000.0, 0.03, 8.0))
_TWILIGHT_FILTER = "V"
_DEFAULT_AREA = 512 * 768  # star and cosmic-ray counts scale with the detector area
_N_BIAS = 3
_N_DARK = 2
_N_LIGHT = 2
_DARK_EXPTIME = 60.0
_LIGHT_EXPTIME = 120.0
_READOUT_S = 25.0
_NIGHT_START = _dt.datetime(2024, 3, 14, 22, 0, 0)
_MJD_ZERO = _dt.datetime(1858, 11, 17)

# Stream tags for the fixed (per-seed) parts of the instrument.
_TAG_OPTICS = 1
_TAG_DUST = 2
_TAG_PRNU = 3
_TAG_DETECTOR = 4
_TAG_FILTER = 5


# --------------------------------------------------------------------------------------------
# The fixed instrument: optical flat per filter, bias pattern, hot columns
# --------------------------------------------------------------------------------------------


def _check_shape(shape) -> tuple[int, int]:
    try:
        ny, nx = (int(n) for n in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a pair of integers (ny, nx), got {shape!r}") from None
    if ny < 16 or nx < 16:
        raise ValueError(f"shape must be at least (16, 16), got {(ny, nx)!r}")
    return ny, nx


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _filter_key(filter_name: str) -> int:
    return zlib.crc32(str(filter_name).encode("utf-8"))


def _rng(seed: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng([seed, *tags])


def flat_field_truth(shape=(512, 768), filter_name: str = "V", seed: int = 0) -> np.ndarray:
    """Return the noiseless optical flat of a filter, normalised to a median of 1.

    This is the response that :func:`simulate_night` multiplies into every flat and light frame
    taken through ``filter_name`` with the same ``shape`` and ``seed``; a correctly combined
    and normalised master flat (after bias subtraction) should recover it to within noise.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(ny, nx)``, rows then columns (the numpy order).
    filter_name : str, optional
        Filter name exactly as in the ``FILTER`` header (for example ``"g''"`` or ``"V"``).
    seed : int, optional
        Seed of the simulated instrument.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of ``shape`` with median 1: vignetting (a radial falloff of roughly
        10-20 % to the corners), a handful of dust donuts (annular dips of a few percent) and
        about 1 % gaussian pixel-response non-uniformity.

    Notes
    -----
    The vignetting and the dust donuts depend mildly on the filter; the dust positions and the
    pixel-response pattern belong to the instrument and are the same for every filter.
    """
    ny, nx = _check_shape(shape)
    seed = _check_seed(seed)
    fkey = _filter_key(filter_name)
    frng = _rng(seed, _TAG_FILTER, fkey)
    orng = _rng(seed, _TAG_OPTICS)

    # Vignetting: a radial falloff about an optical centre slightly off the chip centre.
    cy = (ny - 1) / 2 + orng.uniform(-0.05, 0.05) * ny
    cx = (nx - 1) / 2 + orng.uniform(-0.05, 0.05) * nx
    rmax = 0.5 * np.hypot(ny, nx)
    strength = 0.12 * frng.uniform(0.85, 1.15)
    y2 = ((np.arange(ny, dtype=np.float32) - cy) / rmax) ** 2
    x2 = ((np.arange(nx, dtype=np.float32) - cx) / rmax) ** 2
    r2 = y2[:, None] + x2[None, :]
    flat = 1.0 - strength * r2 * (1.0 + 0.5 * r2)
    flat = flat.astype(np.float32, copy=False)

    # Dust donuts: out-of-focus shadows of dust on the window, evaluated on their boxes only.
    drng = _rng(seed, _TAG_DUST)
    n_donut = int(drng.integers(3, 7))
    size = min(ny, nx)
    depth_scale = frng.uniform(0.8, 1.2)
    for _ in range(n_donut):
        radius = drng.uniform(0.025, 0.06) * size
        width = max(0.3 * radius, 1.0)
        depth = drng.uniform(0.02, 0.05) * depth_scale
        y0 = drng.uniform(0, ny)
        x0 = drng.uniform(0, nx)
        half = radius + 4 * width
        r0, r1 = max(int(y0 - half), 0), min(int(y0 + half) + 1, ny)
        c0, c1 = max(int(x0 - half), 0), min(int(x0 + half) + 1, nx)
        if r0 >= r1 or c0 >= c1:
            continue
        yy = (np.arange(r0, r1, dtype=np.float32) - y0)[:, None]
        xx = (np.arange(c0, c1, dtype=np.float32) - x0)[None, :]
        rr = np.sqrt(yy * yy + xx * xx)
        flat[r0:r1, c0:c1] *= 1.0 - depth * np.exp(-0.5 * ((rr - radius) / width) ** 2)

    # Pixel-response non-uniformity: a fixed 1 % gaussian pattern of the detector.
    prnu = _rng(seed, _TAG_PRNU).standard_normal((ny, nx), dtype=np.float32)
    prnu *= 0.01
    prnu += 1.0
    flat *= prnu
    flat /= np.float32(np.median(flat))
    return flat


@dataclass(frozen=True)
class _Detector:
    bias: np.ndarray  # float32 bias pattern, including the level
    hot: tuple[tuple[int, int, float], ...]  # (column, first row, rate ADU/s)


def detector_defects(shape=(512, 768), seed: int = 0) -> dict:
    """Describe the fixed detector defects :func:`simulate_night` puts into every frame.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(ny, nx)``, rows then columns.
    seed : int, optional
        Seed of the simulated instrument.

    Returns
    -------
    dict
        ``"hot_columns"``: list of ``(column, first_row, rate)``, a column whose pixels from
        ``first_row`` to the top collect ``rate`` ADU/s of extra dark current;
        ``"bias"``: the noiseless ``float32`` bias image (level about 1000 ADU plus a faint
        column pattern and row gradient);
        ``"gain"``, ``"read_noise"``, ``"dark_rate"``: the detector constants (e-/ADU, ADU,
        ADU/s).
    """
    ny, nx = _check_shape(shape)
    det = _detector(ny, nx, _check_seed(seed))
    return {
        "hot_columns": [(c, r, rate) for c, r, rate in det.hot],
        "bias": det.bias.copy(),
        "gain": GAIN,
        "read_noise": READ_NOISE,
        "dark_rate": DARK_RATE,
    }


def _detector(ny: int, nx: int, seed: int, *tags: int) -> _Detector:
    rng = _rng(seed, _TAG_DETECTOR, *tags)
    columns = rng.normal(0.0, 1.5, nx).astype(np.float32)
    rows = np.linspace(-1.5, 1.5, ny, dtype=np.float32)
    bias = np.float32(BIAS_LEVEL) + rows[:, None] + columns[None, :]
    n_hot = int(rng.integers(1, 3))
    cols = rng.choice(nx, size=n_hot, replace=False)
    hot = tuple(
        (int(c), int(rng.integers(0, ny // 2)), float(rng.uniform(20.0, 60.0))) for c in cols
    )
    return _Detector(bias=bias, hot=hot)


# --------------------------------------------------------------------------------------------
# Per-frame ingredients
# --------------------------------------------------------------------------------------------


def _scaled_count(base: float, ny: int, nx: int) -> float:
    return base * (ny * nx) / _DEFAULT_AREA


def _add_stars(image: np.ndarray, ys, xs, peaks, sigma: float) -> None:
    """Add gaussian stars (peak values ``peaks``) into ``image`` in place, vectorised."""
    if len(ys) == 0:
        return
    ny, nx = image.shape
    half = int(np.ceil(4 * sigma))
    off = np.arange(-half, half + 1)
    iy = np.floor(ys).astype(np.int64)[:, None, None] + off[None, :, None]
    ix = np.floor(xs).astype(np.int64)[:, None, None] + off[None, None, :]
    dy = iy - np.asarray(ys)[:, None, None]
    dx = ix - np.asarray(xs)[:, None, None]
    vals = np.asarray(peaks)[:, None, None] * np.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma))
    iy, ix = np.broadcast_arrays(iy, ix)
    ok = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
    np.add.at(image.reshape(-1), (iy[ok] * nx + ix[ok]), vals[ok].astype(image.dtype))


def _add_cosmics(rng: np.random.Generator, image: np.ndarray, mean_count: float) -> None:
    """Add small cosmic-ray hits (1-4 connected pixels, 300-8000 ADU) in place."""
    ny, nx = image.shape
    n = int(rng.poisson(mean_count))
    if n == 0:
        return
    y = rng.integers(0, ny, n)
    x = rng.integers(0, nx, n)
    amp = np.exp(rng.uniform(np.log(300.0), np.log(8000.0), n))
    # Up to three neighbours per hit, at a fraction of the central deposit.
    nb = rng.integers(0, 4, n)
    dy = rng.integers(-1, 2, (n, 3))
    dx = rng.integers(-1, 2, (n, 3))
    frac = rng.uniform(0.1, 0.6, (n, 3))
    keep = np.arange(3)[None, :] < nb[:, None]
    ys = np.concatenate([y, np.clip(y[:, None] + dy, 0, ny - 1)[keep]])
    xs = np.concatenate([x, np.clip(x[:, None] + dx, 0, nx - 1)[keep]])
    vals = np.concatenate([amp, (amp[:, None] * frac)[keep]])
    np.add.at(image.reshape(-1), ys * nx + xs, vals.astype(image.dtype))


def _expose(
    rng: np.random.Generator,
    det: _Detector,
    *,
    signal: np.ndarray | None,
    exptime: float,
    cosmics: float,
    gain: float = GAIN,
) -> np.ndarray:
    """Read out a frame: bias + signal + dark + hot columns, photon and read noise, cosmics.

    ``signal`` (photo-electrons converted to ADU, already through the optical flat) is
    consumed: it is used as the work array.
    """
    ny, nx = det.bias.shape
    mean = np.zeros((ny, nx), np.float32) if signal is None else signal
    mean += np.float32(DARK_RATE * exptime)
    for col, row0, rate in det.hot:
        mean[row0:, col] += np.float32(rate * exptime)
    # Normal approximation to Poisson noise on the electrons plus gaussian read noise, in ADU.
    sigma = mean * np.float32(1.0 / gain)
    sigma += np.float32(READ_NOISE**2)
    np.sqrt(sigma, out=sigma)
    noise = rng.standard_normal((ny, nx), dtype=np.float32)
    noise *= sigma
    del sigma
    mean += noise
    del noise
    mean += det.bias
    _add_cosmics(rng, mean, cosmics)
    return mean


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
    hdr["RDNOISE"] = (READ_NOISE, "[adu] read noise")
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
    if not overwrite:
        for path in paths:
            if os.path.lexists(path):
                raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace)")
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
    total = len(plans)
    for done, (plan, path) in enumerate(zip(plans, paths, strict=True), start=1):
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
            if out_dtype == np.uint16:
                np.rint(data, out=data)
                np.clip(data, 0, 65535, out=data)
                data = data.astype(np.uint16)
            images.append(data)
        header = _header(plan, when, seed)
        if mef:
            del header["GAIN"]
            exts = []
            for k, (data, gain) in enumerate(zip(images, gains, strict=True), start=1):
                ext_header = fits.Header()
                ext_header["GAIN"] = (gain, "[e-/adu] gain of this detector")
                ext_header["BUNIT"] = ("adu", "physical unit of the data")
                exts.append((f"CCD{k}", data, ext_header))
            _write_atomic(path, exts, header)
        else:
            _write_atomic(path, images[0], header)
        when += _dt.timedelta(seconds=plan.exptime + _READOUT_S)
        if progress is not None:
            progress(done, total)
    return paths
