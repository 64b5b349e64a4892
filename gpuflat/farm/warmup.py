"""``gpuflat warmup``: compile, for this machine, every kernel specialisation that
``gpuflat run`` and the library can reach, so that later processes load them from the
caches and compile nothing (container image builds, farm node set-up).

Each step runs the real code on a little data, so that the specialisations compiled are
those a run uses, by construction: the library and the ccdproc drop-in at each size class
of the fast path (1-16, 17-24, 25-32, 33-40, 41-48 and over 48 frames), the generic
block path (the noise model, nkeep, pclip, extrema, mean centre and std width...), the exact
frame median and mean, and the levels of 8- and 16-bit integers from their stored bytes;
then the CUDA kernels where a GPU is present. A step whose kernels are cached already
takes a few milliseconds: a second warmup finishes in about a second.
"""

from __future__ import annotations

import warnings

import numpy as np

#: frames per stack, one per size class of the fast path (``_numba_fast.size_class``)
CLASS_FRAMES = (5, 17, 25, 33, 41, 49)


def steps() -> list[tuple[str, object]]:
    """(label, callable) of every step, in order."""
    out = []
    for n in CLASS_FRAMES:
        out.append((f"combine {n} frames", lambda n=n: _library(n)))
        out.append((f"ccdproc drop-in, {n} frames", lambda n=n: _dropin(n)))
    out += [
        ("combine, generic path", _generic),
        ("frame levels", _levels),
        ("levels of stored integers", _raw_levels),
        ("bad-pixel masks (ccdmask)", _ccdmask),
        ("CUDA kernels", _cuda),
    ]
    return out


def warmup(progress=None) -> list[str]:
    """Run every step; ``progress(done, total, label)`` after each. Returns what each
    step said (the CUDA step says why it compiled nothing where there is no GPU)."""
    said = []
    todo = steps()
    for k, (label, step) in enumerate(todo, start=1):
        note = step()
        if note:
            said.append(f"{label}: {note}")
        if progress is not None:
            progress(k, len(todo), label)
    return said


def _stack(n, rows=24, cols=80, seed=0):
    """n frames like flats: a level with noise, a NaN and a masked-looking outlier, so
    that the block paths also hand lanes to the per-pixel path."""
    rng = np.random.default_rng(seed)
    data = rng.normal(1000.0, 10.0, (n, rows, cols)).astype(np.float32)
    data *= rng.uniform(0.8, 1.2, (n, 1, 1)).astype(np.float32)
    data[0, 1, 3] = np.nan
    data[1, 2, 5] = 1e6
    return data


def _ccdmask():
    """gpuflat mask's kernels for float32 ratios (the ratio of two masters is float32, and
    so are most ratio files): the 7 x 7 median, the sigma mask with a NaN window,
    findbadcolumns. Float64 ratios and other median windows (their networks, or the
    tracker for large ones) compile when first used, with the notice."""
    from .._badpix import ccdmask

    ratio = np.random.default_rng(3).normal(1.0, 0.01, (40, 48)).astype(np.float32)
    ratio[5, 7] = np.nan
    ccdmask(ratio, findbadcolumns=True)


def _library(n):
    from .. import api

    data = _stack(n)
    mask = np.zeros(data.shape[1:], bool)
    mask[0, :3] = True
    api.combine(list(data), backend="cpu")
    api.combine(list(data), backend="cpu", mask=mask, mem_limit=_banded(data))
    api.combine(list(data), backend="cpu", method="median")
    api.combine(list(data), backend="cpu", method="sum", weights=np.linspace(1, 2, n))


def _dropin(n):
    from astropy.nddata import CCDData

    from .. import ccdproc_compat

    ccds = [CCDData(d, unit="adu") for d in _stack(n)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ccdproc_compat.combine(
            ccds, method="average", scale=lambda a: 1 / np.ma.median(a), sigma_clip=True,
            sigma_clip_low_thresh=5, sigma_clip_high_thresh=5,
            sigma_clip_func=np.ma.median, sigma_clip_dev_func=_mad_std,
        )  # fmt: skip
        ccdproc_compat.combine(ccds, method="median")


def _mad_std(a, axis=None):
    from astropy.stats import mad_std

    return mad_std(a, axis=axis, ignore_nan=True)


def _generic():
    from .. import api

    data = _stack(7)
    api.combine(list(data), backend="cpu", clip="ccdclip", rdnoise=5.0, noise_gain=1.5)
    api.combine(list(data), backend="cpu", nkeep=3, center="mean", dev="std", maxiters=3)
    api.combine(list(data), backend="cpu", clip="pclip", nkeep=2)
    api.combine(list(data), backend="cpu", nlow=1, nhigh=1, mem_limit=_banded(data))
    api.combine(list(data), backend="cpu", grow=1.5, mem_limit=_banded(data))


def _banded(data):
    """A memory limit that makes the pipeline read the stack in several bands."""
    return float(data.nbytes * 3)


def _levels():
    from ..backends import _numba

    rng = np.random.default_rng(1)
    frame = rng.normal(1000.0, 10.0, (512, 512)).astype(np.float32)
    mask = np.zeros(frame.shape, np.uint8)
    mask[:4] = 1
    for m in (None, mask):
        for how in ("median", "mean"):
            _numba.frame_level(frame, m, how)
    bits = frame.view(np.uint32).ravel()
    _numba._median_radix(bits, mask.ravel(), True, 2)


def _raw_levels():
    from .._frames import RawFormat
    from ..backends import _numba_median

    rng = np.random.default_rng(2)
    for dtype, bzero in ((">i2", 32768), ("u1", 0)):
        values = rng.integers(10, 200, 4096).astype(dtype)
        fmt = RawFormat(np.dtype(dtype), 1.0, float(bzero), None)
        for how in ("median", "mean"):
            _numba_median.raw_level(values.view(np.uint8), fmt, None, how)
            _numba_median.raw_level(values.view(np.uint8), fmt, np.zeros(4096, np.uint8), how)


def _cuda():
    from ..backends import cuda_status

    ok, why = cuda_status()
    if not ok:
        return f"skipped ({why})"
    from ..backends._cuda import warmup_cuda  # pragma: no cover - needs a GPU

    warmup_cuda()  # pragma: no cover
    return ""  # pragma: no cover
