"""The numba CPU backend: the production fallback and the reference for the CUDA kernels.

Every function here follows ``docs/kernel-contract.md`` operation for operation; the CUDA
kernels in ``kernels/`` do the same, so the two agree bit for bit.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from . import _numba_median, _threads
from ._networks import batcher, merge_network
from ._numba_fast import (
    FAST_L,
    fast_block,
    fast_eligible,
    load_block,
    scratch_size,
    size_class,
)
from ._numba_ops import hi, lo
from ._params import KernelParams, noise_table, pclip_offset

# the digest of _numba_fast.py, _numba_median.py, _numba_merges.py and _numba_ops.py (see
# _networks.DEPENDS_ON)
_DEPENDS_ON = "1850a1547c5eda45"  # sha256 of those four files, in that order

_FAST_BAD = 11 * FAST_L  # the flags' row in the fast path's scratch

MAD_TO_STD = 1.482602218505602
_INF = np.inf
_NAN = np.nan


@nb.njit(cache=True, nogil=True)
def _sort(s, k):
    """Sort ``s[:k]`` in place: a fixed sorting network for the common small stacks would
    be faster, but insertion sort is short, exact and fast for the tens of frames a flat
    stack has."""
    for i in range(1, k):
        x = s[i]
        j = i - 1
        while j >= 0 and s[j] > x:
            s[j + 1] = s[j]
            j -= 1
        s[j + 1] = x


@nb.njit(cache=True, nogil=True)
def _median(s, a, b):
    k = b - a
    return (s[a + (k - 1) // 2] + s[a + k // 2]) * 0.5


@nb.njit(cache=True, nogil=True)
def _mad(s, a, b, med):
    """Median of |s[q] - med| over the sorted range [a, b): merge outward from ``med``."""
    k = b - a
    r1 = (k - 1) // 2
    r2 = k // 2
    j = a
    while j < b and s[j] < med:
        j += 1
    i = j - 1
    d1 = 0.0
    d2 = 0.0
    for r in range(r2 + 1):
        if i >= a and (j >= b or med - s[i] <= s[j] - med):
            dv = med - s[i]
            i -= 1
        else:
            dv = s[j] - med
            j += 1
        if r == r1:
            d1 = dv
        d2 = dv
    return (d1 + d2) * 0.5


@nb.njit(cache=True, nogil=True)
def _member_mean_sd(v, inwin, n, vlo, vhi, k):
    """Mean and population standard deviation of the members (frame order sums)."""
    s = 0.0
    for i in range(n):
        if inwin[i] and v[i] >= vlo and v[i] <= vhi:
            s += v[i]
    mean = s / k
    ss = 0.0
    for i in range(n):
        if inwin[i] and v[i] >= vlo and v[i] <= vhi:
            dv = v[i] - mean
            ss += dv * dv
    return mean, np.sqrt(ss / k)


@nb.njit(cache=True, nogil=True)
def _noise_bounds(c, i, scale, clip_scaled, noise, n, sigma_low, sigma_high):
    """ccdclip: frame i's bounds about the centre ``c`` from the noise model, and its
    width (contract step 5, ccdclip)."""
    sc = scale[i] if clip_scaled else 1.0
    r = c / sc
    if not r > 0.0:
        r = 0.0
    q = r * noise[2 * n + i]
    sig = np.sqrt(noise[i] + r / noise[n + i] + q * q) * sc
    lo = -_INF if sigma_low == _INF else c - sigma_low * sig
    hi = _INF if sigma_high == _INF else c + sigma_high * sig
    return lo, hi, sig


@nb.njit(cache=True, nogil=True)
def _ccdclip(v, inwin, sv, t, n, k, scale, clip_scaled, noise, center, sigma_low, sigma_high,
             maxiters):  # fmt: skip
    """ccdclip (contract step 5): ``sv`` = the survivors among the ``k`` window frames;
    returns the final centre."""
    for i in range(n):
        sv[i] = inwin[i]
    c = 0.0
    it = 0
    while k > 0 and (maxiters < 0 or it < maxiters):
        it += 1
        if center == 0:
            q = 0
            for i in range(n):
                if sv[i]:
                    t[q] = v[i]
                    q += 1
            _sort(t, k)
            c = _median(t, 0, k)
        else:
            total = 0.0
            for i in range(n):
                if sv[i]:
                    total += v[i]
            c = total / k
        k2 = 0
        for i in range(n):
            if sv[i]:
                lo, hi, _ = _noise_bounds(c, i, scale, clip_scaled, noise, n, sigma_low, sigma_high)
                sv[i] = not (v[i] < lo or v[i] > hi)
                k2 += sv[i]
        if k2 == k:
            break
        k = k2
    if it > 0:  # the final bounds apply to the whole window
        for i in range(n):
            if inwin[i]:
                lo, hi, _ = _noise_bounds(c, i, scale, clip_scaled, noise, n, sigma_low, sigma_high)
                sv[i] = not (v[i] < lo or v[i] > hi)
    return c


@nb.njit(cache=True, nogil=True)
def _nkeep_restore(v, inwin, sv, n, need, c, ccdclip, scale, clip_scaled, noise):
    """nkeep (contract step 5b): the ``need`` clipped window frames closest to the centre
    join the survivors, one at a time, smallest distance first, ties by frame index."""
    for _ in range(need):
        best = -1
        be = 0.0
        for i in range(n):
            if inwin[i] and not sv[i]:
                e = abs(v[i] - c)
                if ccdclip and e != 0.0:
                    _, _, sig = _noise_bounds(c, i, scale, clip_scaled, noise, n, 1.0, 1.0)
                    e = e / sig
                if best < 0 or e < be:
                    best = i
                    be = e
        sv[best] = True


@nb.njit(cache=True, nogil=True)
def _pclip_range(s, w0, w1, off, sigma_low, sigma_high):
    """pclip (contract step 5d) on the sorted window ``s[w0:w1]``: the surviving sorted
    positions ``[af, bf)`` and the median."""
    k = w1 - w0
    if k < 3:  # IRAF's MINCLIP
        return w0, w1, 0.0
    med = _median(s, w0, w1)
    if off < 0:
        x = s[w0 + max(0, (k - 1) // 2 + off)]
        d = med - x
    else:
        x = s[w0 + min(k - 1, k // 2 + off)]
        d = x - med
    af = w0
    bf = w1
    if d != 0.0:
        while af < bf and sigma_low != _INF and (med - s[af]) / d >= sigma_low:
            af += 1
        while bf > af and sigma_high != _INF and (s[bf - 1] - med) / d >= sigma_high:
            bf -= 1
    return af, bf, med


# What a caller of ``_combine_pixels`` may ask of it, in the length of a tuple (numba knows
# it when it compiles, and prunes the branches that test it): everything, or (the fast
# path, whose parameters exclude them) neither the noise model, nkeep nor pclip
_ALL_RULES = (0, 0)
_SIGMA_ONLY = (0,)


@nb.njit(cache=True, nogil=True)
def _combine_pixels(
    data, mask, has_mask, scale, weight, has_weight, prm, p0, p1, image, uncert, count, rej,
    rules,
):  # fmt: skip
    """Pixels ``[p0, p1)``, literally as docs/kernel-contract.md says. ``rules``:
    ``_ALL_RULES``, or ``_SIGMA_ONLY`` where ``prm`` has no ccdclip, nkeep or pclip."""
    n = data.shape[0]
    _pixels(
        data, mask, has_mask, scale, weight, has_weight, prm, p0, p1, image, uncert, count,
        rej, rules, np.empty((4, n), np.float64), np.empty((3, n), np.bool_),
    )  # fmt: skip


@nb.njit(cache=True, nogil=True)
def _pixels(
    data, mask, has_mask, scale, weight, has_weight, prm, p0, p1, image, uncert, count, rej,
    rules, fs, bs,
):  # fmt: skip
    """``_combine_pixels`` with its scratch given (float64 ``[4, n]``, bool ``[3, n]``):
    allocates nothing, so that the fast path, compiled without reference counting, can
    call it."""
    (
        clip_scaled,
        min_value,
        max_value,
        nlow,
        nhigh,
        sigma,
        center,
        dev,
        sigma_low,
        sigma_high,
        maxiters,
        method,
        ccdclip,
        nkeep,
        noise,
        pclip,
    ) = prm
    n = data.shape[0]
    v = fs[0]  # clip values, frame order
    y = fs[1]  # combine values, frame order
    s = fs[2]  # sorted clip values of the valid frames
    t = fs[3]  # sorted survivors' combine values; ccdclip's sort buffer
    inwin = bs[0]  # valid, then: valid and inside the extrema window
    valid = bs[1]
    sv = bs[2]  # survivors
    has_rej = rej.size > 0
    for p in range(p0, p1):
        # 1-3: valid frames, values, sort
        m = 0
        for i in range(n):
            x = data[i, p]
            xd = np.float64(x)
            ok = np.isfinite(x) and xd >= min_value and xd <= max_value
            if has_mask and mask[i, p] != 0:
                ok = False
            inwin[i] = ok
            valid[i] = ok
            if ok:
                y[i] = xd * scale[i]
                v[i] = y[i] if clip_scaled else xd
                s[m] = v[i]
                m += 1
        _sort(s, m)
        # 4: extrema window, ties broken by frame index
        w0 = nlow
        w1 = m - nhigh
        w1 = max(w1, w0)
        if nlow + nhigh > 0:
            for i in range(n):
                if valid[i]:
                    rank = 0
                    for j in range(n):
                        if valid[j] and (v[j] < v[i] or (v[j] == v[i] and j < i)):
                            rank += 1
                    inwin[i] = w0 <= rank < w1
        # 5: clipping (astropy semantics). The survivors are the sorted positions [af, bf)
        # unless ``general``: then they are the frames flagged in ``sv``
        af = w0
        bf = w1
        general = False
        c = 0.0
        if len(rules) == 2 and sigma and w1 > w0 and ccdclip:
            c = _ccdclip(
                v, inwin, sv, t, n, w1 - w0, scale, clip_scaled, noise, center, sigma_low,
                sigma_high, maxiters,
            )  # fmt: skip
            general = True
        elif len(rules) == 2 and sigma and w1 > w0 and pclip != 0:
            af, bf, c = _pclip_range(s, w0, w1, pclip, sigma_low, sigma_high)
        elif sigma and w1 > w0:
            a = w0
            b = w1
            lo = -_INF
            hi = _INF
            it = 0
            while b > a and (maxiters < 0 or it < maxiters):
                it += 1
                k = b - a
                med = _median(s, a, b)
                if center == 0 and dev == 0:
                    c = med
                    d = MAD_TO_STD * _mad(s, a, b, med)
                else:
                    mean, sd = _member_mean_sd(v, inwin, n, s[a], s[b - 1], k)
                    c = med if center == 0 else mean
                    d = MAD_TO_STD * _mad(s, a, b, med) if dev == 0 else sd
                lo = -_INF if sigma_low == _INF else c - sigma_low * d
                hi = _INF if sigma_high == _INF else c + sigma_high * d
                a2 = a
                while a2 < b and s[a2] < lo:
                    a2 += 1
                b2 = b
                while b2 > a2 and s[b2 - 1] > hi:
                    b2 -= 1
                if b2 - a2 == b - a:
                    break
                a = a2
                b = b2
            while af < bf and s[af] < lo:
                af += 1
            while bf > af and s[bf - 1] > hi:
                bf -= 1
        if not general:
            for i in range(n):
                sv[i] = bf > af and inwin[i] and s[af] <= v[i] <= s[bf - 1]
        # 5b: nkeep, on the clipping only
        if len(rules) == 2 and sigma and w1 > w0 and nkeep != 0:
            kw = w1 - w0
            keep = min(nkeep, kw) if nkeep > 0 else max(0, kw + nkeep)
            k = 0
            for i in range(n):
                k += sv[i]
            if k < keep:
                _nkeep_restore(v, inwin, sv, n, keep - k, c, ccdclip, scale, clip_scaled, noise)
                general = True
        # 6: combine the survivors
        if general:
            k = 0
            for i in range(n):
                k += sv[i]
        else:
            k = bf - af
        count[p] = k
        if has_rej:  # valid samples that did not survive, per frame
            for i in range(n):
                if valid[i] and not sv[i]:
                    rej[i] += 1
        if k == 0:
            image[p] = np.nan
            uncert[p] = np.nan
            continue
        if method == 1:
            if clip_scaled and not general:
                med = _median(s, af, bf)
                mad = _mad(s, af, bf, med)
            else:
                q = 0
                for i in range(n):
                    if sv[i]:
                        t[q] = y[i]
                        q += 1
                _sort(t, k)
                med = _median(t, 0, k)
                mad = _mad(t, 0, k, med)
            image[p] = med
            uncert[p] = MAD_TO_STD * mad / np.sqrt(k)
            continue
        sy = 0.0
        swy = 0.0
        sw = 0.0
        for i in range(n):
            if sv[i]:
                sy += y[i]
                if has_weight:
                    swy += weight[i] * y[i]
                    sw += weight[i]
        my = sy / k
        ssy = 0.0
        for i in range(n):
            if sv[i]:
                dy = y[i] - my
                ssy += dy * dy
        sd = np.sqrt(ssy / k)
        if method == 0:
            image[p] = swy / sw if has_weight else my
            uncert[p] = sd / np.sqrt(k)
        else:
            image[p] = swy if has_weight else sy
            uncert[p] = sd * np.sqrt(k)


# --------------------------------------------------------------------------------------
# The block path: the same steps on _L pixels ("lanes") at a time. Scratch tiles
# ``tl[T, frame_or_position, lane]`` and per-lane rows ``il[K, lane]`` / ``fl[K, lane]`` are
# indexed directly (no row views, whose reference counting would cost more than the work).
# --------------------------------------------------------------------------------------

_L = 64  # lanes per block
_CHUNK = 4096  # pixels per parallel work item (a whole number of blocks)
# tiles
_TS = 0  # clip values of the valid frames, sorted ascending, then +inf
_TV = 1  # clip values in frame order; NaN when not valid or outside the extrema window
_TD = 2  # deviations; sorted survivors' combine values
# integer lane rows
_M, _W1, _A, _B, _ACT, _BAD, _CL, _CH, _AF, _BF = range(10)
# float lane rows
_MED, _MAD, _LO, _HI, _S1, _S2, _S3, _MEAN, _VLO, _VHI = range(10)


def _bitonic_merger(n):
    """Comparators of a bitonic merger for ``n`` values (+inf padding as in
    ``_networks.batcher``). It sorts a sequence that is +inf, then non-increasing, then
    non-decreasing, then +inf: exactly the deviations ``|S[q] - med|`` of a sorted range,
    with +inf outside the range."""
    size = 1
    while size < n:
        size *= 2
    pairs = []
    d = size // 2
    while d >= 1:
        pairs.extend((i, i + d) for i in range(size) if not i & d and i + d < n)
        d //= 2
    return pairs


_NETWORKS: dict = {}


def _networks(n):
    """Sorting network and bitonic merger for ``n`` frames, each int64 ``[2, ncomparators]``."""
    if n not in _NETWORKS:
        _NETWORKS[n] = tuple(
            np.ascontiguousarray(np.array(pairs, np.int64).reshape(-1, 2).T)
            for pairs in (batcher(n), _bitonic_merger(n))
        )
    return _NETWORKS[n]


@nb.njit(cache=True, nogil=True)
def _apply_network(s, net):
    """Comparators ``net[:, c]`` on every lane of tile ``s``: min to the lower position.

    ``np.minimum``/``np.maximum`` of two non-NaN values is one of them, so the result is
    a permutation of the inputs (lanes with NaN take the per-pixel path)."""
    for c in range(net.shape[1]):
        i = net[0, c]
        j = net[1, c]
        for lane in range(_L):
            x0 = s[i, lane]
            x1 = s[j, lane]
            s[i, lane] = np.minimum(x0, x1)
            s[j, lane] = np.maximum(x0, x1)


@nb.njit(cache=True, nogil=True)
def _sort16(s):
    """Sort rows 0-15 of tile ``s`` on every lane (Batcher, 63 comparators)."""
    for lane in range(_L):
        x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = (
            s[0, lane],
            s[1, lane],
            s[2, lane],
            s[3, lane],
            s[4, lane],
            s[5, lane],
            s[6, lane],
            s[7, lane],
            s[8, lane],
            s[9, lane],
            s[10, lane],
            s[11, lane],
            s[12, lane],
            s[13, lane],
            s[14, lane],
            s[15, lane],
        )
        x0, x1 = lo(x0, x1), hi(x0, x1)
        x2, x3 = lo(x2, x3), hi(x2, x3)
        x4, x5 = lo(x4, x5), hi(x4, x5)
        x6, x7 = lo(x6, x7), hi(x6, x7)
        x8, x9 = lo(x8, x9), hi(x8, x9)
        x10, x11 = lo(x10, x11), hi(x10, x11)
        x12, x13 = lo(x12, x13), hi(x12, x13)
        x14, x15 = lo(x14, x15), hi(x14, x15)
        x0, x2 = lo(x0, x2), hi(x0, x2)
        x1, x3 = lo(x1, x3), hi(x1, x3)
        x4, x6 = lo(x4, x6), hi(x4, x6)
        x5, x7 = lo(x5, x7), hi(x5, x7)
        x8, x10 = lo(x8, x10), hi(x8, x10)
        x9, x11 = lo(x9, x11), hi(x9, x11)
        x12, x14 = lo(x12, x14), hi(x12, x14)
        x13, x15 = lo(x13, x15), hi(x13, x15)
        x1, x2 = lo(x1, x2), hi(x1, x2)
        x5, x6 = lo(x5, x6), hi(x5, x6)
        x9, x10 = lo(x9, x10), hi(x9, x10)
        x13, x14 = lo(x13, x14), hi(x13, x14)
        x0, x4 = lo(x0, x4), hi(x0, x4)
        x1, x5 = lo(x1, x5), hi(x1, x5)
        x2, x6 = lo(x2, x6), hi(x2, x6)
        x3, x7 = lo(x3, x7), hi(x3, x7)
        x8, x12 = lo(x8, x12), hi(x8, x12)
        x9, x13 = lo(x9, x13), hi(x9, x13)
        x10, x14 = lo(x10, x14), hi(x10, x14)
        x11, x15 = lo(x11, x15), hi(x11, x15)
        x2, x4 = lo(x2, x4), hi(x2, x4)
        x3, x5 = lo(x3, x5), hi(x3, x5)
        x10, x12 = lo(x10, x12), hi(x10, x12)
        x11, x13 = lo(x11, x13), hi(x11, x13)
        x1, x2 = lo(x1, x2), hi(x1, x2)
        x3, x4 = lo(x3, x4), hi(x3, x4)
        x5, x6 = lo(x5, x6), hi(x5, x6)
        x9, x10 = lo(x9, x10), hi(x9, x10)
        x11, x12 = lo(x11, x12), hi(x11, x12)
        x13, x14 = lo(x13, x14), hi(x13, x14)
        x0, x8 = lo(x0, x8), hi(x0, x8)
        x1, x9 = lo(x1, x9), hi(x1, x9)
        x2, x10 = lo(x2, x10), hi(x2, x10)
        x3, x11 = lo(x3, x11), hi(x3, x11)
        x4, x12 = lo(x4, x12), hi(x4, x12)
        x5, x13 = lo(x5, x13), hi(x5, x13)
        x6, x14 = lo(x6, x14), hi(x6, x14)
        x7, x15 = lo(x7, x15), hi(x7, x15)
        x4, x8 = lo(x4, x8), hi(x4, x8)
        x5, x9 = lo(x5, x9), hi(x5, x9)
        x6, x10 = lo(x6, x10), hi(x6, x10)
        x7, x11 = lo(x7, x11), hi(x7, x11)
        x2, x4 = lo(x2, x4), hi(x2, x4)
        x3, x5 = lo(x3, x5), hi(x3, x5)
        x6, x8 = lo(x6, x8), hi(x6, x8)
        x7, x9 = lo(x7, x9), hi(x7, x9)
        x10, x12 = lo(x10, x12), hi(x10, x12)
        x11, x13 = lo(x11, x13), hi(x11, x13)
        x1, x2 = lo(x1, x2), hi(x1, x2)
        x3, x4 = lo(x3, x4), hi(x3, x4)
        x5, x6 = lo(x5, x6), hi(x5, x6)
        x7, x8 = lo(x7, x8), hi(x7, x8)
        x9, x10 = lo(x9, x10), hi(x9, x10)
        x11, x12 = lo(x11, x12), hi(x11, x12)
        x13, x14 = lo(x13, x14), hi(x13, x14)
        s[0, lane] = x0
        s[1, lane] = x1
        s[2, lane] = x2
        s[3, lane] = x3
        s[4, lane] = x4
        s[5, lane] = x5
        s[6, lane] = x6
        s[7, lane] = x7
        s[8, lane] = x8
        s[9, lane] = x9
        s[10, lane] = x10
        s[11, lane] = x11
        s[12, lane] = x12
        s[13, lane] = x13
        s[14, lane] = x14
        s[15, lane] = x15


@nb.njit(cache=True, nogil=True)
def _merge16(s):
    """Bitonic merger on rows 0-15 of tile ``s`` on every lane (32 comparators)."""
    for lane in range(_L):
        x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = (
            s[0, lane],
            s[1, lane],
            s[2, lane],
            s[3, lane],
            s[4, lane],
            s[5, lane],
            s[6, lane],
            s[7, lane],
            s[8, lane],
            s[9, lane],
            s[10, lane],
            s[11, lane],
            s[12, lane],
            s[13, lane],
            s[14, lane],
            s[15, lane],
        )
        x0, x8 = lo(x0, x8), hi(x0, x8)
        x1, x9 = lo(x1, x9), hi(x1, x9)
        x2, x10 = lo(x2, x10), hi(x2, x10)
        x3, x11 = lo(x3, x11), hi(x3, x11)
        x4, x12 = lo(x4, x12), hi(x4, x12)
        x5, x13 = lo(x5, x13), hi(x5, x13)
        x6, x14 = lo(x6, x14), hi(x6, x14)
        x7, x15 = lo(x7, x15), hi(x7, x15)
        x0, x4 = lo(x0, x4), hi(x0, x4)
        x1, x5 = lo(x1, x5), hi(x1, x5)
        x2, x6 = lo(x2, x6), hi(x2, x6)
        x3, x7 = lo(x3, x7), hi(x3, x7)
        x8, x12 = lo(x8, x12), hi(x8, x12)
        x9, x13 = lo(x9, x13), hi(x9, x13)
        x10, x14 = lo(x10, x14), hi(x10, x14)
        x11, x15 = lo(x11, x15), hi(x11, x15)
        x0, x2 = lo(x0, x2), hi(x0, x2)
        x1, x3 = lo(x1, x3), hi(x1, x3)
        x4, x6 = lo(x4, x6), hi(x4, x6)
        x5, x7 = lo(x5, x7), hi(x5, x7)
        x8, x10 = lo(x8, x10), hi(x8, x10)
        x9, x11 = lo(x9, x11), hi(x9, x11)
        x12, x14 = lo(x12, x14), hi(x12, x14)
        x13, x15 = lo(x13, x15), hi(x13, x15)
        x0, x1 = lo(x0, x1), hi(x0, x1)
        x2, x3 = lo(x2, x3), hi(x2, x3)
        x4, x5 = lo(x4, x5), hi(x4, x5)
        x6, x7 = lo(x6, x7), hi(x6, x7)
        x8, x9 = lo(x8, x9), hi(x8, x9)
        x10, x11 = lo(x10, x11), hi(x10, x11)
        x12, x13 = lo(x12, x13), hi(x12, x13)
        x14, x15 = lo(x14, x15), hi(x14, x15)
        s[0, lane] = x0
        s[1, lane] = x1
        s[2, lane] = x2
        s[3, lane] = x3
        s[4, lane] = x4
        s[5, lane] = x5
        s[6, lane] = x6
        s[7, lane] = x7
        s[8, lane] = x8
        s[9, lane] = x9
        s[10, lane] = x10
        s[11, lane] = x11
        s[12, lane] = x12
        s[13, lane] = x13
        s[14, lane] = x14
        s[15, lane] = x15


@nb.njit(cache=True, nogil=True)
def _sort_tile(s, net):
    """Sort tile ``s`` (rows: frames) on every lane."""
    if s.shape[0] == 16:
        _sort16(s)
    else:
        _apply_network(s, net)


@nb.njit(cache=True, nogil=True)
def _merge_tile(s, net):
    """Bitonic merger on tile ``s`` on every lane."""
    if s.shape[0] == 16:
        _merge16(s)
    else:
        _apply_network(s, net)


@nb.njit(cache=True, nogil=True, inline="always")
def _usable(data, mask, use_mask, i, p, prm):
    """Step 1 for one sample: (its value as float64, whether it is valid)."""
    xd = np.float64(data[i, p])
    ok = (abs(xd) < _INF) & (xd >= prm[1]) & (xd <= prm[2])
    if use_mask:
        ok = ok & (mask[i, p] == 0)
    return xd, ok


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _load_lanes(data, mask, use_mask, i, sc, prm, p0, nl, tl, il):
    clip_scaled = prm[0]
    for lane in range(nl):
        xd, ok = _usable(data, mask, use_mask, i, p0 + lane, prm)
        yv = xd * sc
        vv = yv if clip_scaled else xd
        tl[_TV, i, lane] = vv if ok else _NAN
        tl[_TS, i, lane] = vv if ok else _INF
        il[_M, lane] += ok
        # values whose order the network and the merge could give differently from the
        # literal sort and walk: NaN and infinities (from the scale), negative zeros
        odd = (
            ((yv - yv) != 0.0)
            | ((yv == 0.0) & (math.copysign(1.0, yv) < 0.0))
            | ((xd == 0.0) & (math.copysign(1.0, xd) < 0.0))
        )
        il[_BAD, lane] |= ok & odd


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _load_block(data, mask, has_mask, scale, prm, p0, nl, tl, il):
    """Steps 1-2: valid samples, clip values, valid counts; lanes past ``nl`` are empty."""
    n = data.shape[0]
    for lane in range(_L):
        il[_M, lane] = 0
        il[_BAD, lane] = 0
    for i in range(n):
        # two calls (with and without the mask) so that each loop vectorises
        if has_mask:
            _load_lanes(data, mask, True, i, scale[i], prm, p0, nl, tl, il)
        else:
            _load_lanes(data, mask, False, i, scale[i], prm, p0, nl, tl, il)
        for lane in range(nl, _L):
            tl[_TV, i, lane] = _NAN
            tl[_TS, i, lane] = _INF


@nb.njit(cache=True, nogil=True)
def _window(tl, il, n, w0):
    """Step 4 for nlow/nhigh: frames outside [w0, w1) by rank get NaN in the _TV tile.

    The frames valued S[w0] have consecutive ranks from that value's first position, in
    frame order, so the first (w0 - first) of them fall below the window; likewise the
    frames valued S[w1 - 1] from its first position up to w1 stay inside."""
    for lane in range(_L):
        w1 = il[_W1, lane]
        if w1 <= w0:
            continue  # nothing survives, the members do not matter
        lv = tl[_TS, w0, lane]
        q = w0
        while q > 0 and tl[_TS, q - 1, lane] == lv:
            q -= 1
        lskip = w0 - q
        uv = tl[_TS, w1 - 1, lane]
        q = w1 - 1
        while q > 0 and tl[_TS, q - 1, lane] == uv:
            q -= 1
        ukeep = w1 - q
        nlo = 0
        nhi = 0
        for i in range(n):
            x = tl[_TV, i, lane]
            if x == x:
                inside = (x > lv or (x == lv and nlo >= lskip)) and (
                    x < uv or (x == uv and nhi < ukeep)
                )
                if x == lv:
                    nlo += 1
                if x == uv:
                    nhi += 1
                if not inside:
                    tl[_TV, i, lane] = _NAN


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _medians(tl, t, il, a_row, b_row, fl, out_row):
    """``fl[out_row]`` = median of the sorted range [a, b) of tile ``t``, per lane (garbage
    where the range is empty)."""
    last = tl.shape[1] - 1
    for lane in range(_L):
        a = il[a_row, lane]
        k = max(il[b_row, lane] - a, 1)
        i1 = min(a + ((k - 1) >> 1), last)
        i2 = min(a + (k >> 1), last)
        fl[out_row, lane] = (tl[t, i1, lane] + tl[t, i2, lane]) * 0.5


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _range_mad(tl, src, a, b, fl, mrg):
    """``fl[_MAD]`` = median of ``|src[q] - fl[_MED]|`` over the sorted range [a, b) of
    tile ``src``, per lane (``a``, ``b``: rows of ``il``): deviations (+inf outside the
    range) into _TD, bitonic merger."""
    for q in range(tl.shape[1]):
        for lane in range(_L):
            inr = (a[lane] <= q) & (q < b[lane])
            dv = abs(src[q, lane] - fl[_MED, lane])
            tl[_TD, q, lane] = dv if inr else _INF
    _merge_tile(tl[_TD], mrg)
    for lane in range(_L):
        k = max(b[lane] - a[lane], 1)
        fl[_MAD, lane] = (tl[_TD, (k - 1) >> 1, lane] + tl[_TD, k >> 1, lane]) * 0.5


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _member_bounds(tl, il, a_row, b_row, fl):
    """``fl[_VLO]``, ``fl[_VHI]`` = S[a], S[b-1] (+inf, -inf for an empty range): the
    members are the frames in the window with S[a] <= v <= S[b-1]."""
    last = tl.shape[1] - 1
    for lane in range(_L):
        a = il[a_row, lane]
        b = il[b_row, lane]
        vlo = tl[_TS, min(a, last), lane]
        vhi = tl[_TS, max(b - 1, 0), lane]
        fl[_VLO, lane] = vlo if b > a else _INF
        fl[_VHI, lane] = vhi if b > a else -_INF


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _member_stats(tl, n, il, fl):
    """Member mean (``fl[_MEAN]``) and sum of squared deviations (``fl[_S2]``) of the clip
    values over the range [a, b), in frame order."""
    _member_bounds(tl, il, _A, _B, fl)
    for lane in range(_L):
        fl[_S1, lane] = 0.0
        fl[_S2, lane] = 0.0
    for i in range(n):
        for lane in range(_L):
            x = tl[_TV, i, lane]
            inm = (x >= fl[_VLO, lane]) & (x <= fl[_VHI, lane])
            fl[_S1, lane] += x if inm else 0.0
    for lane in range(_L):
        fl[_MEAN, lane] = fl[_S1, lane] / (il[_B, lane] - il[_A, lane])
    for i in range(n):
        for lane in range(_L):
            x = tl[_TV, i, lane]
            inm = (x >= fl[_VLO, lane]) & (x <= fl[_VHI, lane])
            dv = x - fl[_MEAN, lane]
            fl[_S2, lane] += dv * dv if inm else 0.0


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _count_clipped(tl, n, il, a_row, b_row, fl):
    """``il[_CL]``, ``il[_CH]``: positions of the sorted range [a, b) below ``fl[_LO]`` and
    above ``fl[_HI]``."""
    for lane in range(_L):
        il[_CL, lane] = 0
        il[_CH, lane] = 0
    for q in range(n):
        for lane in range(_L):
            inr = (il[a_row, lane] <= q) & (q < il[b_row, lane])
            x = tl[_TS, q, lane]
            il[_CL, lane] += inr & (x < fl[_LO, lane])
            il[_CH, lane] += inr & (x > fl[_HI, lane])


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _sigma_clip(tl, il, fl, n, w0, prm, mrg):
    """Step 5 on every lane: the surviving sorted positions ``[af, bf)``.

    Active lanes iterate on [a, b); a lane that stops gets an empty range, so it adds no
    deviations, members or clipped counts, and keeps its last bounds."""
    sigma = prm[5]
    center = prm[6]
    dev = prm[7]
    sigma_low = prm[8]
    sigma_high = prm[9]
    maxiters = prm[10]
    nact = 0
    for lane in range(_L):
        w1 = il[_W1, lane]
        act = sigma & (w1 > w0)
        il[_ACT, lane] = act
        il[_A, lane] = w0
        il[_B, lane] = w1 if act else w0
        il[_AF, lane] = w0
        il[_BF, lane] = w1
        fl[_LO, lane] = -_INF
        fl[_HI, lane] = _INF
        nact += act
    it = 0
    while nact > 0 and (maxiters < 0 or it < maxiters):
        it += 1
        _medians(tl, _TS, il, _A, _B, fl, _MED)
        if dev == 0:
            _range_mad(tl, tl[_TS], il[_A], il[_B], fl, mrg)
        if center == 1 or dev == 1:
            _member_stats(tl, n, il, fl)
        for lane in range(_L):
            c = fl[_MED, lane] if center == 0 else fl[_MEAN, lane]
            if dev == 0:
                d = MAD_TO_STD * fl[_MAD, lane]
            else:
                d = np.sqrt(fl[_S2, lane] / (il[_B, lane] - il[_A, lane]))
            lo = -_INF if sigma_low == _INF else c - sigma_low * d
            hi = _INF if sigma_high == _INF else c + sigma_high * d
            act = il[_ACT, lane] != 0
            fl[_LO, lane] = lo if act else fl[_LO, lane]
            fl[_HI, lane] = hi if act else fl[_HI, lane]
        _count_clipped(tl, n, il, _A, _B, fl)
        nact = 0
        for lane in range(_L):
            a = il[_A, lane]
            b = il[_B, lane]
            a2 = a + il[_CL, lane]
            b2 = max(a2, b - il[_CH, lane])
            if it == 1:
                # the final bounds apply to the whole window [w0, w1): after the first
                # iteration that is the range just narrowed
                act = il[_ACT, lane] != 0
                il[_AF, lane] = a2 if act else il[_AF, lane]
                il[_BF, lane] = b2 if act else il[_BF, lane]
            go = (b2 - a2 != b - a) & (b2 > a2)
            il[_ACT, lane] = go
            il[_A, lane] = a2
            il[_B, lane] = b2 if go else a2
            nact += go
    if it > 1:
        # some lane iterated again: apply the final bounds to the whole window
        for lane in range(_L):
            il[_A, lane] = w0
            il[_B, lane] = il[_W1, lane]
        _count_clipped(tl, n, il, _A, _B, fl)
        for lane in range(_L):
            af = w0 + il[_CL, lane]
            il[_AF, lane] = af
            il[_BF, lane] = max(af, il[_W1, lane] - il[_CH, lane])


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _ccdclip_lanes(tl, il, fl, n, w0, prm, scale, srt):
    """Step 5 with ccdclip on every lane, as ``_ccdclip`` does per pixel: the alive window
    values in frame order in _TD (NaN when not alive), the centre in ``fl[_MEAN]``. At the
    end _TV holds the survivors in frame order (NaN otherwise), _TS them sorted (then +inf)
    and [af, bf) = [0, k), so that step 6 reads them as it reads a clipped range."""
    clip_scaled = prm[0]
    center = prm[6]
    sigma_low = prm[8]
    sigma_high = prm[9]
    maxiters = prm[10]
    noise = prm[14]
    nact = 0
    for lane in range(_L):
        k = il[_W1, lane] - w0
        act = k > 0
        il[_ACT, lane] = act
        il[_A, lane] = 0
        il[_B, lane] = k
        fl[_MEAN, lane] = 0.0
        nact += act
    # (a lane with an empty window may hold values in _TV: ``_window`` skips it)
    for i in range(n):
        for lane in range(_L):
            tl[_TV, i, lane] = tl[_TV, i, lane] if il[_W1, lane] > w0 else _NAN
            tl[_TD, i, lane] = tl[_TV, i, lane]
    it = 0
    while nact > 0 and (maxiters < 0 or it < maxiters):
        it += 1
        if center == 0:
            for i in range(n):
                for lane in range(_L):
                    x = tl[_TD, i, lane]
                    tl[_TS, i, lane] = x if x == x else _INF
            _sort_tile(tl[_TS], srt)
            _medians(tl, _TS, il, _A, _B, fl, _MED)
        else:
            for lane in range(_L):
                fl[_S1, lane] = 0.0
            for i in range(n):
                for lane in range(_L):
                    x = tl[_TD, i, lane]
                    fl[_S1, lane] += x if x == x else 0.0
            for lane in range(_L):
                fl[_MED, lane] = fl[_S1, lane] / max(il[_B, lane], 1)
        for lane in range(_L):
            act = il[_ACT, lane] != 0
            fl[_MEAN, lane] = fl[_MED, lane] if act else fl[_MEAN, lane]
            il[_CL, lane] = 0
        for i in range(n):
            for lane in range(_L):
                x = tl[_TD, i, lane]
                lo, hi, _ = _noise_bounds(
                    fl[_MEAN, lane], i, scale, clip_scaled, noise, n, sigma_low, sigma_high
                )
                keep = not (x < lo or x > hi)
                act = il[_ACT, lane] != 0
                tl[_TD, i, lane] = x if (keep or not act) else _NAN
                il[_CL, lane] += keep & (x == x)
        nact = 0
        for lane in range(_L):
            k = il[_B, lane]
            k2 = il[_CL, lane]
            act = il[_ACT, lane] != 0
            go = act & (k2 != k) & (k2 > 0)
            il[_B, lane] = k2 if act else k
            il[_ACT, lane] = go
            nact += go
    # the final bounds apply to the whole window
    for lane in range(_L):
        il[_AF, lane] = 0
        il[_BF, lane] = 0
    for i in range(n):
        for lane in range(_L):
            x = tl[_TV, i, lane]
            if it > 0:
                lo, hi, _ = _noise_bounds(
                    fl[_MEAN, lane], i, scale, clip_scaled, noise, n, sigma_low, sigma_high
                )
                x = _NAN if (x < lo or x > hi) else x
            tl[_TV, i, lane] = x
            tl[_TS, i, lane] = x if x == x else _INF
            il[_BF, lane] += x == x
    _sort_tile(tl[_TS], srt)


@nb.njit(cache=True, nogil=True)
def _pclip_lanes(tl, il, w0, prm):
    """Step 5d (pclip) on every lane, as ``_pclip_range`` does per pixel (lanes past the
    block's have empty windows)."""
    for lane in range(_L):
        af, bf, _ = _pclip_range(tl[_TS, :, lane], w0, il[_W1, lane], prm[15], prm[8], prm[9])
        il[_AF, lane] = af
        il[_BF, lane] = bf


@nb.njit(cache=True, nogil=True)
def _nkeep_lanes(il, w0, nkeep):
    """nkeep on every lane: a lane whose clipping left fewer than it keeps goes to the
    per-pixel path (``_nkeep_restore``); most lanes lose a sample or two at most."""
    for lane in range(_L):
        kw = il[_W1, lane] - w0
        keep = min(nkeep, kw) if nkeep > 0 else max(0, kw + nkeep)
        if il[_BF, lane] - il[_AF, lane] < keep:
            il[_BAD, lane] = 1


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _combine_lanes(
    tl, il, fl, n, scale, weight, has_weight, prm, srt, mrg, p0, nl, image, uncert, count
):
    """Step 6: the survivors are the frames in the window with S[af] <= v <= S[bf-1]; their
    combine values are ``v`` (clip_scaled) or ``v * scale``, as in step 2."""
    clip_scaled = prm[0]
    method = prm[11]
    _member_bounds(tl, il, _AF, _BF, fl)
    if method == 1:
        if clip_scaled:
            _medians(tl, _TS, il, _AF, _BF, fl, _MED)
            _range_mad(tl, tl[_TS], il[_AF], il[_BF], fl, mrg)
        else:
            # the survivors' combine values, sorted into _TD (+inf after them)
            for i in range(n):
                sc = scale[i]
                for lane in range(_L):
                    x = tl[_TV, i, lane]
                    inm = (x >= fl[_VLO, lane]) & (x <= fl[_VHI, lane])
                    tl[_TD, i, lane] = x * sc if inm else _INF
            for i in range(n, tl.shape[1]):
                for lane in range(_L):
                    tl[_TD, i, lane] = _INF
            _sort_tile(tl[_TD], srt)
            for lane in range(_L):
                il[_A, lane] = 0
                il[_B, lane] = il[_BF, lane] - il[_AF, lane]
            _medians(tl, _TD, il, _A, _B, fl, _MED)
            _range_mad(tl, tl[_TD], il[_A], il[_B], fl, mrg)
        for lane in range(nl):
            k = il[_BF, lane] - il[_AF, lane]
            p = p0 + lane
            count[p] = k
            image[p] = fl[_MED, lane] if k > 0 else _NAN
            unc = MAD_TO_STD * fl[_MAD, lane] / np.sqrt(k)
            uncert[p] = unc if k > 0 else _NAN
        return
    # frame-order sums; adding +0.0 for a non-member leaves a sum's bits unchanged (a sum
    # that starts at +0.0 is never -0.0)
    for lane in range(_L):
        fl[_S1, lane] = 0.0
        fl[_S2, lane] = 0.0
        fl[_S3, lane] = 0.0
    for i in range(n):
        sc = scale[i]
        wi = weight[i] if has_weight else 0.0
        for lane in range(_L):
            x = tl[_TV, i, lane]
            inm = (x >= fl[_VLO, lane]) & (x <= fl[_VHI, lane])
            y = x if clip_scaled else x * sc
            fl[_S1, lane] += y if inm else 0.0
            if has_weight:
                fl[_S2, lane] += wi * y if inm else 0.0
                fl[_S3, lane] += wi if inm else 0.0
    for lane in range(_L):
        fl[_MEAN, lane] = fl[_S1, lane] / (il[_BF, lane] - il[_AF, lane])
        fl[_MAD, lane] = 0.0  # the sum of squared deviations
    for i in range(n):
        sc = scale[i]
        for lane in range(_L):
            x = tl[_TV, i, lane]
            inm = (x >= fl[_VLO, lane]) & (x <= fl[_VHI, lane])
            y = x if clip_scaled else x * sc
            dy = y - fl[_MEAN, lane]
            fl[_MAD, lane] += dy * dy if inm else 0.0
    for lane in range(nl):
        k = il[_BF, lane] - il[_AF, lane]
        p = p0 + lane
        count[p] = k
        sd = np.sqrt(fl[_MAD, lane] / k)
        if method == 0:
            img = fl[_S2, lane] / fl[_S3, lane] if has_weight else fl[_MEAN, lane]
            unc = sd / np.sqrt(k)
        else:
            img = fl[_S2, lane] if has_weight else fl[_S1, lane]
            unc = sd * np.sqrt(k)
        image[p] = img if k > 0 else _NAN
        uncert[p] = unc if k > 0 else _NAN


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _count_rejected(data, mask, has_mask, prm, p0, nl, tl, il, fl, rej):
    """``rej[i]`` += the lanes where frame i's sample is valid (step 1) but not a survivor
    (outside the extrema window or clipped). Only lanes that lost a sample are visited (most
    pixels lose none); lanes left to the per-pixel path count there."""
    for lane in range(nl):
        if il[_M, lane] == il[_BF, lane] - il[_AF, lane] or il[_BAD, lane]:
            continue
        for i in range(data.shape[0]):
            _, ok = _usable(data, mask, has_mask, i, p0 + lane, prm)
            x = tl[_TV, i, lane]
            if ok and not (x >= fl[_VLO, lane] and x <= fl[_VHI, lane]):
                rej[i] += 1


@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _fast_range(
    data, mask, has_mask, scale, weight, has_weight, prm, net, cls, p0, p1, W, fs, bs, image,
    uncert, count, rej,
):  # fmt: skip
    """Pixels ``[p0, p1)`` by the fast path (``_numba_fast``): its full blocks, the lanes
    it cannot vouch for (flagged in ``W``) and a partial block per pixel. ``cls``:
    ``size_class(n)``; ``W``: scratch of ``scratch_size(n)``; ``fs``, ``bs``: the
    per-pixel path's (``_pixels``).

    Compiled without reference counting (it allocates nothing, and the caller holds the
    arrays): the block code would otherwise take and drop the arrays' reference counts,
    atomically, about 20 times per block (14% of the time on one thread, and more with
    the threads sharing the arrays). One function between the block code and Python:
    numba optimises a function's callees again inside each caller."""
    n = data.shape[0]
    full = p0 + (p1 - p0) // FAST_L * FAST_L
    for b0 in range(p0, full, FAST_L):
        load_block(data, scale, n, b0, W, net, cls)
        nbad = fast_block(
            data, mask, has_mask, scale, weight, has_weight, prm, b0, W, image, uncert, count,
            rej,
        )  # fmt: skip
        if nbad > 0:
            for lane in range(FAST_L):
                if W[_FAST_BAD + lane] != 0.0:
                    _pixels(
                        data, mask, has_mask, scale, weight, has_weight, prm, b0 + lane,
                        b0 + lane + 1, image, uncert, count, rej, _SIGMA_ONLY, fs, bs,
                    )  # fmt: skip
    if full < p1:
        _pixels(
            data, mask, has_mask, scale, weight, has_weight, prm, full, p1, image, uncert,
            count, rej, _SIGMA_ONLY, fs, bs,
        )  # fmt: skip


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _combine_range(
    data, mask, has_mask, scale, weight, has_weight, prm, srt, mrg, p0, p1, image, uncert,
    count, rej,
):  # fmt: skip
    """Pixels ``[p0, p1)`` by the generic block path, a block of ``_L`` lanes at a time
    (the steps are those of docs/kernel-contract.md). ``rej`` (int64 [n], or empty for
    none): rejected samples per frame are added to it. The block loop is here, not in a
    function of its own: numba optimises a function's callees again in each caller."""
    n = data.shape[0]
    nlow = prm[3]
    nhigh = prm[4]
    # the straight-line networks sort 16 rows: the rows past n stay +inf
    tl = np.empty((3, 16 if n <= 16 else n, _L), np.float64)
    tl[_TS, n:, :] = _INF
    il = np.empty((10, _L), np.int64)
    fl = np.empty((10, _L), np.float64)
    fs = np.empty((4, n), np.float64)
    bs = np.empty((3, n), np.bool_)
    for b0 in range(p0, p1, _L):
        nl = min(_L, p1 - b0)
        _load_block(data, mask, has_mask, scale, prm, b0, nl, tl, il)  # 1-2
        _sort_tile(tl[_TS], srt)  # 3
        for lane in range(_L):  # 4
            il[_W1, lane] = max(il[_M, lane] - nhigh, nlow)
        if nlow + nhigh > 0:
            _window(tl, il, n, nlow)
        if prm[5] and prm[12]:  # 5
            _ccdclip_lanes(tl, il, fl, n, nlow, prm, scale, srt)
        elif prm[5] and prm[15] != 0:
            _pclip_lanes(tl, il, nlow, prm)
        else:
            _sigma_clip(tl, il, fl, n, nlow, prm, mrg)
        if prm[5] and prm[13] != 0:  # 5b
            _nkeep_lanes(il, nlow, prm[13])
        _combine_lanes(  # 6
            tl, il, fl, n, scale, weight, has_weight, prm, srt, mrg, b0, nl, image, uncert,
            count,
        )  # fmt: skip
        if rej.size > 0:
            _count_rejected(data, mask, has_mask, prm, b0, nl, tl, il, fl, rej)
        for lane in range(nl):
            if il[_BAD, lane]:
                # the literal per-pixel path for lanes the block path cannot vouch for
                _pixels(
                    data, mask, has_mask, scale, weight, has_weight, prm, b0 + lane,
                    b0 + lane + 1, image, uncert, count, rej, _ALL_RULES, fs, bs,
                )  # fmt: skip


def _in_parts(n, npix, rej, work):
    """``work(p0, p1, rej_t)`` on equal runs of whole chunks of the band's ``npix`` pixels,
    one run per thread (``_threads``), as a static ``prange`` schedule would hand them
    out; each run's rejected counts ``rej_t`` are added to ``rej`` (int64 [n], or empty
    for none)."""
    nchunks = (npix + _CHUNK - 1) // _CHUNK
    nparts = min(_threads.parts(), nchunks)
    bounds = [min(npix, (nchunks * t // nparts) * _CHUNK) for t in range(nparts + 1)]

    def part(t):
        r = np.zeros(n, np.int64) if rej.size > 0 else rej
        work(bounds[t], bounds[t + 1], r)
        return r

    for r in _threads.run_parts(part, nparts):
        if rej.size > 0:
            rej += r


def combine_band(data, mask, scale, weight, params: KernelParams, out=None, rejected=None):
    """Reject and combine one band.

    Parameters
    ----------
    data : float32 array, shape (n, npix)
        The band of every frame, frame-major.
    mask : uint8 array, shape (n, npix), or None
        Nonzero marks a bad sample.
    scale : float64 array, shape (n,)
        Per-frame scale factors.
    weight : float64 array, shape (n,), or None
        Per-frame weights.
    params : KernelParams
        Rejection and combine options.
    out : (image, uncert, count) arrays, optional
        Where to write the results: contiguous, shape (npix,), image and uncertainty
        float64 or float32 (the float64 values rounded as they are stored, as an
        assignment would), count int32. The pipeline passes the rows of its results.
    rejected : int64 array, shape (n,), optional
        Per frame, the number of valid samples (step 1 of the contract: finite, unmasked,
        within min/max) that did not survive (extrema window or sigma clipping) is added.

    Returns
    -------
    image, uncert : float64 arrays (or those of ``out``), shape (npix,)
    count : int32 array, shape (npix,)
    """
    npix = data.shape[1]
    if out is None:
        out = (np.empty(npix, np.float64), np.empty(npix, np.float64), np.empty(npix, np.int32))
    image, uncert, count = out
    has_mask = mask is not None
    has_weight = weight is not None
    args = (
        data,
        mask if has_mask else _NO_MASK,
        has_mask,
        np.ascontiguousarray(scale, np.float64),
        np.ascontiguousarray(weight, np.float64) if has_weight else _NO_WEIGHT,
        has_weight,
        _as_tuple(params, data.shape[0]),
    )
    rej = _NO_REJECTED if rejected is None else rejected
    n = data.shape[0]
    if fast_eligible(params, n) and not (params.ccdclip or params.nkeep or params.pclip):
        # sorts runs of 16 frames in registers and merges them by a network
        net, cls = merge_network(n), size_class(n)

        def work(p0, p1, r):
            _fast_range(
                *args, net, cls, p0, p1, np.empty(scratch_size(n)), np.empty((4, n)),
                np.empty((3, n), np.bool_), image, uncert, count, r,
            )  # fmt: skip

    else:
        srt, mrg = _networks(n)

        def work(p0, p1, r):
            _combine_range(*args, srt, mrg, p0, p1, image, uncert, count, r)

    _in_parts(n, npix, rej, work)
    return image, uncert, count


_NO_REJECTED = np.zeros(0, np.int64)
_NO_MASK = np.zeros((1, 1), np.uint8)
_NO_WEIGHT = np.ones(1)


def _as_tuple(params: KernelParams, n: int | None = None):
    """Fixed numeric types, so that numba compiles the kernel once; the noise model table
    (``_params.noise_table``), then pclip's offset (``_params.pclip_offset``), last."""
    if n is None:
        n = len(params.rdnoise)
    return (
        bool(params.clip_scaled),
        float(params.min_value),
        float(params.max_value),
        int(params.nlow),
        int(params.nhigh),
        bool(params.sigma),
        int(params.center),
        int(params.dev),
        float(params.sigma_low),
        float(params.sigma_high),
        int(params.maxiters),
        int(params.method),
        bool(params.ccdclip),
        int(params.nkeep),
        noise_table(params, n),
        int(pclip_offset(params.pclip, n)),
    )


@nb.njit(cache=True, nogil=True)
def _row_sums(frame, mask, has_mask, r0, r1, sums, counts):
    """Rows ``[r0, r1)``: each row's sum (float64, in column order) and count of usable
    values."""
    for r in range(r0, r1):
        s = 0.0
        k = 0
        for c in range(frame.shape[1]):
            x = frame[r, c]
            if np.isfinite(x) and not (has_mask and mask[r, c] != 0):
                s += np.float64(x)
                k += 1
        sums[r] = s
        counts[r] = k


# --------------------------------------------------------------------------------------
# Frame median: exact, by radix selection on the float32 bit patterns. Two parallel passes
# over the frame, each a 65536-bin histogram (the high 16 bits of a key that orders like the
# values, then the low 16 bits within the bins that hold the two middle ranks), so the time
# is two reads of the frame split over the cores instead of a serial partition of a copy.
# --------------------------------------------------------------------------------------

_BINS = 1 << 16


@nb.njit(cache=True, nogil=True, inline="always")
def _key(bits):
    """The float32 bit pattern as an unsigned key in the order of the values."""
    return bits ^ np.uint32(0xFFFFFFFF) if bits >> 31 else bits | np.uint32(0x80000000)


@nb.njit(cache=True, nogil=True)
def _median_hist_part(bits, mask, has_mask, p0, p1, high, want, h):
    """Histogram into ``h`` the usable values of ``[p0, p1)``: of ``key >> 16`` when
    ``high``, else of ``key & 0xFFFF`` over the keys whose high half is ``want[j]`` (row
    j)."""
    for p in range(p0, p1):
        b = bits[p]
        # finite: the exponent is not all ones
        if (b & np.uint32(0x7F800000)) == np.uint32(0x7F800000):
            continue
        if has_mask and mask[p] != 0:
            continue
        k = _key(b)
        if high:
            h[0, k >> 16] += 1
        else:
            for j in range(want.size):
                if (k >> 16) == want[j]:
                    h[j, k & np.uint32(0xFFFF)] += 1


def _median_hist(bits, mask, has_mask, nparts, high, want):
    """Histograms of the usable values (``_median_hist_part``), the frame in ``nparts``
    parts, each on a thread of its own (``_threads``)."""
    npix = bits.size
    step = (npix + nparts - 1) // nparts

    def part(t):
        h = np.zeros((max(want.size, 1), _BINS), np.int64)
        _median_hist_part(bits, mask, has_mask, t * step, min(npix, (t + 1) * step), high, want, h)
        return h

    return np.sum(_threads.run_parts(part, nparts), axis=0)


def _bin_of_rank(hist, rank):
    """(bin, rank within that bin) of the value of the given rank."""
    cum = np.cumsum(hist)
    b = int(np.searchsorted(cum, rank, side="right"))
    return b, rank - (int(cum[b - 1]) if b else 0)


def _small_median(bits, m, has_mask):
    """The radix selection's result for a small frame, by NumPy: a partition of the same
    keys (so the same value, the sign of a zero included), with no 65536-bin histograms
    and no compiled code to load."""
    good = (bits & np.uint32(0x7F800000)) != np.uint32(0x7F800000)  # finite
    if has_mask:
        good &= m == 0
    b = bits[good]
    k = b.size
    if k == 0:
        return float("nan")
    keys = np.where(b >> np.uint32(31) != 0, ~b, b | np.uint32(0x80000000))
    ranks = ((k - 1) // 2, k // 2)
    part = np.partition(keys, ranks)
    values = []
    for r in ranks:
        key = part[r]
        raw = key ^ np.uint32(0x80000000) if key >> np.uint32(31) else key ^ np.uint32(0xFFFFFFFF)
        values.append(float(np.array(raw, np.uint32).view(np.float32)))
    return (values[0] + values[1]) * 0.5


def _frame_median(frame, mask):
    bits = np.ascontiguousarray(frame, np.float32).view(np.uint32).ravel()
    has_mask = mask is not None
    m = np.ascontiguousarray(mask != 0).view(np.uint8).ravel() if has_mask else _NO_MASK.ravel()
    if bits.size < _numba_median.MIN_SIZE:
        return _small_median(bits, m, has_mask)
    nparts = nb.get_num_threads()
    found = _numba_median.select(bits.view(np.float32), m, has_mask, nparts)
    if found is not None:
        return found
    return _median_radix(bits, m, has_mask, nparts)


def _median_radix(bits, m, has_mask, nparts):
    """The exact median by radix selection on the float32 bit patterns (two histograms)."""
    none = np.empty(0, np.uint32)
    high = _median_hist(bits, m, has_mask, nparts, True, none)[0]
    k = int(high.sum())
    if k == 0:
        return float("nan")
    ranks = ((k - 1) // 2, k // 2)
    bins = [_bin_of_rank(high, r) for r in ranks]
    want = np.unique(np.array([b for b, _ in bins], np.uint32))
    low = _median_hist(bits, m, has_mask, nparts, False, want)
    values = []
    for b, r in bins:
        lo, _ = _bin_of_rank(low[int(np.searchsorted(want, b))], r)
        key = np.uint32((b << 16) | lo)
        raw = key ^ np.uint32(0x80000000) if key >> 31 else key ^ np.uint32(0xFFFFFFFF)
        values.append(float(np.array(raw, np.uint32).view(np.float32)))
    return (values[0] + values[1]) * 0.5


def frame_level(frame, mask, how: str) -> float:
    """The level of one whole frame over its finite, unmasked values.

    ``how`` is "median" (exact; the two middle values averaged in float64) or "mean".
    Returns NaN when the frame has no usable value.
    """
    if how == "mean":
        rows = frame.shape[0]
        sums, counts = np.zeros(rows), np.zeros(rows, np.int64)
        m = mask if mask is not None else frame[:1, :1]
        nparts = max(1, min(_threads.parts(), rows))
        _threads.run_parts(
            lambda t: _row_sums(
                frame, m, mask is not None, rows * t // nparts, rows * (t + 1) // nparts, sums,
                counts,
            ),
            nparts,
        )  # fmt: skip
        total = float(np.cumsum(sums)[-1]) if len(sums) else 0.0  # row order
        k = int(counts.sum())
        return total / k if k else float("nan")
    return _frame_median(frame, mask)
