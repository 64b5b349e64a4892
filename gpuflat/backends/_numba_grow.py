"""The numba backend's combination with every sample's status (docs/kernel-contract.md,
step 8), for the grow (``gpuflat._grow``): the band combined as ``_numba.combine_band``
does (its fast path where it applies); then, per pixel, the valid samples (step 1): where
they all survived (the count is their number, as at most pixels) their statuses follow,
and the other pixels go through the contract's literal per-pixel path again
(``_numba._pixels``, all rules), whose flags give them.

Its cached function holds ``_numba.py``'s code: this file carries that file's digest
(``_DEPENDS_ON``, see ``_networks.DEPENDS_ON``).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import _numba
from ._numba import _ALL_RULES, _pixels

# the digest of _numba.py (see _networks.DEPENDS_ON)
_DEPENDS_ON = "6f2207465afb90c3"


@nb.njit(cache=True, nogil=True)
def _status_range(
    data, mask, has_mask, scale, weight, has_weight, prm, p0, p1, image, uncert, count, status
):  # fmt: skip
    """``status[i, p]`` = 0 (not valid), 1 (survivor) or 2 (valid, not a survivor) for
    the pixels ``[p0, p1)`` combined already (``count``): 0 or 1 where every valid sample
    survived, else from the per-pixel path (which writes the pixel's results again, the
    same bits)."""
    n = data.shape[0]
    min_value = prm[1]
    max_value = prm[2]
    fs = np.empty((4, n), np.float64)
    bs = np.empty((3, n), np.bool_)
    rej = np.zeros(0, np.int64)
    for p in range(p0, p1):
        m = 0
        for i in range(n):
            x = data[i, p]
            xd = np.float64(x)
            ok = np.isfinite(x) and xd >= min_value and xd <= max_value
            if has_mask and mask[i, p] != 0:
                ok = False
            status[i, p] = 1 if ok else 0
            m += ok
        if m == count[p]:
            continue
        _pixels(
            data, mask, has_mask, scale, weight, has_weight, prm, p, p + 1, image, uncert,
            count, rej, _ALL_RULES, fs, bs,
        )  # fmt: skip
        for i in range(n):
            status[i, p] = (1 if bs[2, i] else 2) if bs[1, i] else 0


def combine_band_status(data, mask, scale, weight, params, out, status):
    """``_numba.combine_band`` (no rejected counts) that also writes every sample's status
    into ``status`` (uint8 [n, npix], C-contiguous)."""
    n, npix = data.shape
    if status.shape != data.shape or status.dtype != np.uint8:
        raise ValueError(f"status must be uint8 of shape {data.shape}")
    image, uncert, count = _numba.combine_band(data, mask, scale, weight, params, out)
    has_mask = mask is not None
    has_weight = weight is not None
    args = (
        data,
        mask if has_mask else _numba._NO_MASK,
        has_mask,
        np.ascontiguousarray(scale, np.float64),
        np.ascontiguousarray(weight, np.float64) if has_weight else _numba._NO_WEIGHT,
        has_weight,
        _numba._as_tuple(params, n),
    )

    def work(p0, p1, r):
        _status_range(*args, p0, p1, image, uncert, count, status)

    _numba._in_parts(n, npix, _numba._NO_REJECTED, work)
    return image, uncert, count
