"""The numba CPU backend: the production fallback and the reference for the CUDA kernels.

Every function here follows ``docs/kernel-contract.md`` operation for operation; the CUDA
kernels in ``kernels/`` do the same, so the two agree bit for bit.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ._params import KernelParams

MAD_TO_STD = 1.482602218505602
_INF = np.inf
_CHUNK = 1024  # pixels per parallel work item: the scratch stays in L1/L2


@nb.njit(cache=True, nogil=True, inline="always")
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


@nb.njit(cache=True, nogil=True, inline="always")
def _median(s, a, b):
    k = b - a
    return (s[a + (k - 1) // 2] + s[a + k // 2]) * 0.5


@nb.njit(cache=True, nogil=True, inline="always")
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


@nb.njit(cache=True, nogil=True, inline="always")
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
def _combine_pixels(
    data, mask, has_mask, scale, weight, has_weight, prm, p0, p1, image, uncert, count
):
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
    ) = prm
    n = data.shape[0]
    v = np.empty(n, np.float64)  # clip values, frame order
    y = np.empty(n, np.float64)  # combine values, frame order
    s = np.empty(n, np.float64)  # sorted clip values of the valid frames
    t = np.empty(n, np.float64)  # sorted survivors' combine values (clip_scaled == 0)
    inwin = np.empty(n, np.bool_)  # valid, then: valid and inside the extrema window
    valid = np.empty(n, np.bool_)
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
                valid[i] = inwin[i]
            for i in range(n):
                if valid[i]:
                    rank = 0
                    for j in range(n):
                        if valid[j] and (v[j] < v[i] or (v[j] == v[i] and j < i)):
                            rank += 1
                    inwin[i] = w0 <= rank < w1
        # 5: sigma clipping (astropy semantics)
        af = w0
        bf = w1
        if sigma and w1 > w0:
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
        # 6: combine the survivors
        k = bf - af
        count[p] = k
        if k == 0:
            image[p] = np.nan
            uncert[p] = np.nan
            continue
        vlo = s[af]
        vhi = s[bf - 1]
        if method == 1:
            if clip_scaled:
                med = _median(s, af, bf)
                mad = _mad(s, af, bf, med)
            else:
                q = 0
                for i in range(n):
                    if inwin[i] and v[i] >= vlo and v[i] <= vhi:
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
            if inwin[i] and v[i] >= vlo and v[i] <= vhi:
                sy += y[i]
                if has_weight:
                    swy += weight[i] * y[i]
                    sw += weight[i]
        my = sy / k
        ssy = 0.0
        for i in range(n):
            if inwin[i] and v[i] >= vlo and v[i] <= vhi:
                dy = y[i] - my
                ssy += dy * dy
        sd = np.sqrt(ssy / k)
        if method == 0:
            image[p] = swy / sw if has_weight else my
            uncert[p] = sd / np.sqrt(k)
        else:
            image[p] = swy if has_weight else sy
            uncert[p] = sd * np.sqrt(k)


@nb.njit(cache=True, nogil=True, parallel=True)
def _combine_parallel(data, mask, has_mask, scale, weight, has_weight, prm, image, uncert, count):
    npix = data.shape[1]
    nchunks = (npix + _CHUNK - 1) // _CHUNK
    for c in nb.prange(nchunks):
        p0 = c * _CHUNK
        p1 = min(npix, p0 + _CHUNK)
        _combine_pixels(
            data,
            mask,
            has_mask,
            scale,
            weight,
            has_weight,
            prm,
            p0,
            p1,
            image,
            uncert,
            count,
        )


def combine_band(data, mask, scale, weight, params: KernelParams):
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

    Returns
    -------
    image, uncert : float64 arrays, shape (npix,)
    count : int32 array, shape (npix,)
    """
    npix = data.shape[1]
    image = np.empty(npix, np.float64)
    uncert = np.empty(npix, np.float64)
    count = np.empty(npix, np.int32)
    has_mask = mask is not None
    has_weight = weight is not None
    _combine_parallel(
        data,
        mask if has_mask else np.zeros((1, 1), np.uint8),
        has_mask,
        np.ascontiguousarray(scale, np.float64),
        np.ascontiguousarray(weight, np.float64) if has_weight else np.ones(1),
        has_weight,
        _as_tuple(params),
        image,
        uncert,
        count,
    )
    return image, uncert, count


def _as_tuple(params: KernelParams):
    """Fixed numeric types, so that numba compiles the kernel once."""
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
    )


@nb.njit(cache=True, nogil=True, parallel=True)
def _row_sums(frame, mask, has_mask):
    rows = frame.shape[0]
    sums = np.zeros(rows, np.float64)
    counts = np.zeros(rows, np.int64)
    for r in nb.prange(rows):
        s = 0.0
        k = 0
        for c in range(frame.shape[1]):
            x = frame[r, c]
            if np.isfinite(x) and not (has_mask and mask[r, c] != 0):
                s += np.float64(x)
                k += 1
        sums[r] = s
        counts[r] = k
    return sums, counts


def frame_level(frame, mask, how: str) -> float:
    """The level of one whole frame over its finite, unmasked values.

    ``how`` is "median" (exact; the two middle values averaged in float64) or "mean".
    Returns NaN when the frame has no usable value.
    """
    if how == "mean":
        sums, counts = _row_sums(
            frame, mask if mask is not None else frame[:1, :1], mask is not None
        )
        total = float(np.cumsum(sums)[-1]) if len(sums) else 0.0  # row order
        k = int(counts.sum())
        return total / k if k else float("nan")
    values = frame.ravel()
    good = np.isfinite(values)
    if mask is not None:
        good &= mask.ravel() == 0
    values = values.copy() if good.all() else values[good]
    k = values.size
    if k == 0:
        return float("nan")
    kth = [(k - 1) // 2, k // 2]
    values.partition(kth)
    return (float(values[kth[0]]) + float(values[kth[1]])) * 0.5
