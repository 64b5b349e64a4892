"""The numba backend's combination with every sample's status (docs/kernel-contract.md,
step 8), for the grow (``gpuflat._grow``): the contract's literal per-pixel path
(``_numba._pixels``, all rules), then each frame's status from its flags.

Its cached function holds ``_numba.py``'s code: this file carries that file's digest
(``_DEPENDS_ON``, see ``_networks.DEPENDS_ON``).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import _numba
from ._numba import _ALL_RULES, _pixels

# the digest of _numba.py (see _networks.DEPENDS_ON)
_DEPENDS_ON = "23e39ee9982e0b64"

#: a sample's status: not valid (step 1), a survivor, valid but rejected
INVALID, SURVIVOR, REJECTED = 0, 1, 2


@nb.njit(cache=True, nogil=True)
def _status_range(
    data, mask, has_mask, scale, weight, has_weight, prm, p0, p1, image, uncert, count, status
):  # fmt: skip
    """Pixels ``[p0, p1)`` one at a time by the per-pixel path; ``status[i, p]`` = 0 (not
    valid), 1 (survivor) or 2 (valid, not a survivor)."""
    n = data.shape[0]
    fs = np.empty((4, n), np.float64)
    bs = np.empty((3, n), np.bool_)
    rej = np.zeros(0, np.int64)
    for p in range(p0, p1):
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
    if out is None:
        out = (np.empty(npix, np.float64), np.empty(npix, np.float64), np.empty(npix, np.int32))
    image, uncert, count = out
    if status.shape != data.shape or status.dtype != np.uint8:
        raise ValueError(f"status must be uint8 of shape {data.shape}")
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
