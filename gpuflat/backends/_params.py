"""The plain-number parameters every backend's combine kernel takes."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

CENTERS = {"median": 0, "mean": 1}
DEVS = {"mad_std": 0, "std": 1}
METHODS = {"average": 0, "median": 1, "sum": 2}


#: a sample's status (docs/kernel-contract.md, step 8): not valid (step 1), a survivor,
#: valid but rejected (the grow's status pass; the kernels write the numbers themselves)
INVALID, SURVIVOR, REJECTED = 0, 1, 2


class KernelParams(NamedTuple):
    """Per-pixel rejection and combine options, as numbers (see docs/kernel-contract.md).

    ``ccdclip`` (with ``sigma``): the clipping width of each frame comes from the CCD noise
    model, with the per-frame ``rdnoise`` (electrons), ``gain`` (e-/ADU) and ``snoise``
    (fraction), one value per frame each (empty unless ``ccdclip``). ``nkeep``: the least
    number of window frames the clipping leaves (negative: the most it rejects).
    ``pclip`` (nonzero, with ``sigma``): IRAF's percentile clipping, the user's parameter
    as given (a fraction of the frames when below 1 in absolute value, else a number of
    them); the backends hand the kernels :func:`pclip_offset` of it.
    """

    clip_scaled: int = 1
    min_value: float = float("-inf")
    max_value: float = float("inf")
    nlow: int = 0
    nhigh: int = 0
    sigma: int = 1
    center: int = 0
    dev: int = 0
    sigma_low: float = 5.0
    sigma_high: float = 5.0
    maxiters: int = 1
    method: int = 0
    ccdclip: int = 0
    nkeep: int = 0
    rdnoise: tuple = ()
    gain: tuple = ()
    snoise: tuple = ()
    pclip: float = 0.0


def noise_table(params: KernelParams, n: int) -> np.ndarray:
    """The noise model as the kernels take it: float64 ``[3 * n]``, frame i's
    ``(rdnoise_i / gain_i) ** 2`` at ``i``, ``gain_i`` at ``n + i``, ``snoise_i`` at
    ``2 n + i``; computed here once, so every backend uses the same bits. Empty (size 0)
    unless ``params.ccdclip``."""
    if not params.ccdclip:
        return np.zeros(0, np.float64)
    rd, gain, sn = (
        np.asarray(v, np.float64).ravel() for v in (params.rdnoise, params.gain, params.snoise)
    )
    if not rd.size == gain.size == sn.size == n:
        raise ValueError(
            f"ccdclip needs rdnoise, gain and snoise for each of the {n} frames; got "
            f"{rd.size}, {gain.size} and {sn.size} values"
        )
    ratio = rd / gain
    return np.ascontiguousarray(np.concatenate([ratio * ratio, gain, sn]), np.float64)


def pclip_offset(pclip: float, n: int) -> int:
    """pclip's percentile pixel for a stack of ``n`` frames, as IRAF imcombine sets it
    once per combination (docs/kernel-contract.md, step 5d): a signed number of sorted
    positions from the median (negative: below it), at least 1 and at most ``n // 2`` in
    absolute value; a fraction (``|pclip| < 1``) counts in units of ``n // 2``, and the
    product is truncated toward zero. 0 when ``pclip`` is 0 (no percentile clipping)."""
    if not pclip:
        return 0
    half = n // 2
    p = pclip * half if abs(pclip) < 1 else pclip
    if pclip < 0:
        return min(-1, max(-half, int(p)))
    return max(1, min(half, int(p)))
