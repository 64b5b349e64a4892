"""The simulated instrument behind :mod:`gpuflat._simulate`: optical flat per filter,
bias pattern, hot columns, stars, cosmic rays, and the exposure of one raw frame."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

#: Detector and instrument constants of the simulation.
GAIN = 1.5  # e-/ADU
READ_NOISE = 5.0  # ADU
BIAS_LEVEL = 1000.0  # ADU
DARK_RATE = 0.02  # ADU/s, everywhere

_DEFAULT_AREA = 512 * 768  # star and cosmic-ray counts scale with the detector area

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
