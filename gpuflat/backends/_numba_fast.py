"""The fast block path of the numba combine kernel (the common case, close to the hardware).

It handles the guide's parameter family (clip the scaled values, no extrema window, sigma
clipping with median centre and mad_std width) on blocks of ``FAST_L`` pixels ("lanes")
at a time, where every lane loop has a compile-time trip count and branch-free bodies, so
that LLVM turns it into vector code. It gives bit for bit the results of the per-pixel
path (``_numba._combine_pixels``, the literal transcription of docs/kernel-contract.md):

- a lane is handled here only when every frame's sample is valid (finite, unmasked,
  within min/max) and its scaled value ``y`` satisfies ``0 < |y| <= 1e300``: no NaN or
  infinity, no signed zeros (whose order a sorting network may swap), and no overflow in
  the sums and differences below. Every other lane is flagged in ``bad`` and left to the
  per-pixel path, which also counts its rejections;
- sorting: any sorting network gives the same sorted values (the same multiset, and no
  two distinct values compare equal once zeros are excluded);
- median: ``(S[(n-1)//2] + S[n//2]) * 0.5`` as in the contract;
- MAD: the deviations ``med - S[h1-j]`` (j = 0..h1) and ``S[h1+1+j] - med`` are two
  non-decreasing runs (h1 = (n-1)//2; ``S[h1] <= med <= S[h1+1]``), and they are exactly the
  values the contract's walk computes, so the median of the deviations is the mean of two
  order statistics of the union of two sorted runs: ``min_i max(A[i-1], B[r-i])``;
- survivors: after one iteration the kept sorted positions are those with
  ``not (S[q] < lo or S[q] > hi)``, so a frame survives exactly when
  ``not (y < lo) and not (y > hi)`` (a NaN bound clips nothing, as in the contract);
- a lane where nothing survives (zero-width bounds between the two middle values) gets
  NaN as the per-pixel path writes it;
- sums in frame order; a non-survivor adds ``+0.0``, which leaves a sum that started at
  ``+0.0`` unchanged bit for bit;
- when a lane clips something and the contract asks for more (a median of the survivors,
  or further iterations), the lane goes to the per-pixel path too (rare).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

FAST_L = 64  # lanes per block (the same as the generic block path's)
_PF = 1024  # prefetch distance, in pixels (per frame row)
_BIG = 1e300
MAD_TO_STD = 1.482602218505602
_INF = np.inf
_NAN = np.nan
# float lane rows of F
_MED, _D1, _D2, _LO, _HI, _SY, _K, _MEAN, _SS, _SWY, _SW = range(11)
NROWS_F = 11


@intrinsic
def _prefetch(typingctx, arr, i, j):
    """Hint the cache to fetch the line holding ``arr[i, j]`` (no effect on results)."""
    sig = types.void(arr, i, j)

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(
            context, builder, aty, ary, [args[1], args[2]], wraparound=False
        )
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # read, high locality, data cache
        builder.call(
            fn,
            [
                builder.bitcast(ptr, i8p),
                ir.Constant(i32, 0),
                ir.Constant(i32, 3),
                ir.Constant(i32, 1),
            ],
        )
        return context.get_dummy_value()

    return sig, codegen


def fast_eligible(params, n) -> bool:
    """Whether the fast block path applies to these kernel parameters."""
    return (
        n >= 1
        and bool(params.clip_scaled)
        and params.nlow == 0
        and params.nhigh == 0
        and bool(params.sigma)
        and params.center == 0
        and params.dev == 0
        and params.maxiters != 0
    )


@nb.njit(cache=True, nogil=True, inline="always")
def _cx(a, b):
    """Compare-exchange: (min, max), each one of the inputs (a select LLVM emits as
    vminpd/vmaxpd)."""
    return (a if a < b else b), (b if a < b else a)


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _sort16(T):
    """Sort rows 0-15 of ``T`` on every lane in registers: Green's 60-comparator network
    (10 layers). Rows past n hold +inf, which every comparator leaves in place, so the
    network sorts the first n rows for any n <= 16."""
    for lane in range(FAST_L):
        x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = (
            T[0, lane],
            T[1, lane],
            T[2, lane],
            T[3, lane],
            T[4, lane],
            T[5, lane],
            T[6, lane],
            T[7, lane],
            T[8, lane],
            T[9, lane],
            T[10, lane],
            T[11, lane],
            T[12, lane],
            T[13, lane],
            T[14, lane],
            T[15, lane],
        )
        x0, x13 = _cx(x0, x13)
        x1, x12 = _cx(x1, x12)
        x2, x15 = _cx(x2, x15)
        x3, x14 = _cx(x3, x14)
        x4, x8 = _cx(x4, x8)
        x5, x6 = _cx(x5, x6)
        x7, x11 = _cx(x7, x11)
        x9, x10 = _cx(x9, x10)
        x0, x5 = _cx(x0, x5)
        x1, x7 = _cx(x1, x7)
        x2, x9 = _cx(x2, x9)
        x3, x4 = _cx(x3, x4)
        x6, x13 = _cx(x6, x13)
        x8, x14 = _cx(x8, x14)
        x10, x15 = _cx(x10, x15)
        x11, x12 = _cx(x11, x12)
        x0, x1 = _cx(x0, x1)
        x2, x3 = _cx(x2, x3)
        x4, x5 = _cx(x4, x5)
        x6, x8 = _cx(x6, x8)
        x7, x9 = _cx(x7, x9)
        x10, x11 = _cx(x10, x11)
        x12, x13 = _cx(x12, x13)
        x14, x15 = _cx(x14, x15)
        x0, x2 = _cx(x0, x2)
        x1, x3 = _cx(x1, x3)
        x4, x10 = _cx(x4, x10)
        x5, x11 = _cx(x5, x11)
        x6, x7 = _cx(x6, x7)
        x8, x9 = _cx(x8, x9)
        x12, x14 = _cx(x12, x14)
        x13, x15 = _cx(x13, x15)
        x1, x2 = _cx(x1, x2)
        x3, x12 = _cx(x3, x12)
        x4, x6 = _cx(x4, x6)
        x5, x7 = _cx(x5, x7)
        x8, x10 = _cx(x8, x10)
        x9, x11 = _cx(x9, x11)
        x13, x14 = _cx(x13, x14)
        x1, x4 = _cx(x1, x4)
        x2, x6 = _cx(x2, x6)
        x5, x8 = _cx(x5, x8)
        x7, x10 = _cx(x7, x10)
        x9, x13 = _cx(x9, x13)
        x11, x14 = _cx(x11, x14)
        x2, x4 = _cx(x2, x4)
        x3, x6 = _cx(x3, x6)
        x9, x12 = _cx(x9, x12)
        x11, x13 = _cx(x11, x13)
        x3, x5 = _cx(x3, x5)
        x6, x8 = _cx(x6, x8)
        x7, x9 = _cx(x7, x9)
        x10, x12 = _cx(x10, x12)
        x3, x4 = _cx(x3, x4)
        x5, x6 = _cx(x5, x6)
        x7, x8 = _cx(x7, x8)
        x9, x10 = _cx(x9, x10)
        x11, x12 = _cx(x11, x12)
        x6, x7 = _cx(x6, x7)
        x8, x9 = _cx(x8, x9)
        T[0, lane] = x0
        T[1, lane] = x1
        T[2, lane] = x2
        T[3, lane] = x3
        T[4, lane] = x4
        T[5, lane] = x5
        T[6, lane] = x6
        T[7, lane] = x7
        T[8, lane] = x8
        T[9, lane] = x9
        T[10, lane] = x10
        T[11, lane] = x11
        T[12, lane] = x12
        T[13, lane] = x13
        T[14, lane] = x14
        T[15, lane] = x15


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _kth(T, F, out, h1, n, r):
    """``F[out]`` = the r-th smallest (0-based) of the deviations, per lane: the union of
    A[j] = med - T[h1-j] (j = 0..h1) and B[j] = T[h1+1+j] - med (j = 0..n-h1-2)."""
    p = h1 + 1
    q = n - p
    lo_i = max(0, r + 1 - q)
    hi_i = min(p, r + 1)
    for lane in range(FAST_L):
        F[out, lane] = _INF
    for i in range(lo_i, hi_i + 1):
        if i == 0:  # r + 1 from B
            rb = p + r
            for lane in range(FAST_L):
                c = T[rb, lane] - F[_MED, lane]
                cur = F[out, lane]
                F[out, lane] = c if c < cur else cur
        elif i == r + 1:  # r + 1 from A
            ra = h1 - r
            for lane in range(FAST_L):
                c = F[_MED, lane] - T[ra, lane]
                cur = F[out, lane]
                F[out, lane] = c if c < cur else cur
        else:
            ra = h1 - (i - 1)
            rb = p + (r - i)
            for lane in range(FAST_L):
                ca = F[_MED, lane] - T[ra, lane]
                cb = T[rb, lane] - F[_MED, lane]
                c = ca if ca > cb else cb
                cur = F[out, lane]
                F[out, lane] = c if c < cur else cur


@nb.njit(cache=True, nogil=True, error_model="numpy")
def fast_block(
    data, mask, has_mask, scale, weight, has_weight, prm, net, p0, T, Y, F, bad, image,
    uncert, count, rej,
):  # fmt: skip
    """One full block of ``FAST_L`` pixels from ``p0``; returns the number of lanes left
    to the per-pixel path (flagged nonzero in ``bad``)."""
    n, npix = data.shape
    min_value = prm[1]
    max_value = prm[2]
    sigma_low = prm[8]
    sigma_high = prm[9]
    maxiters = prm[10]
    method = prm[11]
    check_range = (min_value > -_INF) | (max_value < _INF)
    pf = min(p0 + _PF, npix - FAST_L)
    # unsigned indices: no wraparound selects, so the lane loops load and store vectors
    pu = np.uint64(p0)
    # 1-2: values, and the lanes this path cannot vouch for
    for lane in range(FAST_L):
        bad[lane] = 0.0
    for i in range(n):
        s = scale[i]
        for k in range(0, FAST_L, 16):
            _prefetch(data, i, pf + k)
        for lane in range(FAST_L):
            x = np.float64(data[i, pu + np.uint64(lane)])
            y = x * s
            T[i, lane] = y
            Y[i, lane] = y
            ay = abs(y)
            bad[lane] = bad[lane] if (ay > 0.0) & (ay <= _BIG) else 1.0
        if check_range:
            for lane in range(FAST_L):
                x = np.float64(data[i, pu + np.uint64(lane)])
                bad[lane] = bad[lane] if (x >= min_value) & (x <= max_value) else 1.0
        if has_mask:
            _prefetch(mask, i, pf)
            for lane in range(FAST_L):
                bad[lane] = bad[lane] if mask[i, pu + np.uint64(lane)] == 0 else 1.0
    # 3: sort each lane's values
    if n <= 16:
        for i in range(n, 16):
            for lane in range(FAST_L):
                T[i, lane] = _INF  # a lane with NaN may have moved its values here
        _sort16(T)
    for c in range(0 if n <= 16 else net.shape[1]):
        i = net[0, c]
        j = net[1, c]
        for lane in range(FAST_L):
            a = T[i, lane]
            b = T[j, lane]
            T[i, lane] = a if a < b else b
            T[j, lane] = b if a < b else a
    # 5: one iteration of sigma clipping over all n frames
    h1 = (n - 1) // 2
    h2 = n // 2
    for lane in range(FAST_L):
        F[_MED, lane] = (T[h1, lane] + T[h2, lane]) * 0.5
    _kth(T, F, _D1, h1, n, h1)
    if h2 != h1:
        _kth(T, F, _D2, h1, n, h2)
    else:
        for lane in range(FAST_L):
            F[_D2, lane] = F[_D1, lane]
    nclip = 0
    for lane in range(FAST_L):
        mad = (F[_D1, lane] + F[_D2, lane]) * 0.5
        F[_D1, lane] = mad
        d = MAD_TO_STD * mad
        c = F[_MED, lane]
        lo = -_INF if sigma_low == _INF else c - sigma_low * d
        hi = _INF if sigma_high == _INF else c + sigma_high * d
        F[_LO, lane] = lo
        F[_HI, lane] = hi
        clipped = (T[0, lane] < lo) | (T[n - 1, lane] > hi)
        nclip += 1 if clipped & (bad[lane] == 0.0) else 0
    if nclip > 0 and (method == 1 or maxiters != 1):
        # another iteration or a median of fewer survivors: the per-pixel path
        for lane in range(FAST_L):
            clipped = (T[0, lane] < F[_LO, lane]) | (T[n - 1, lane] > F[_HI, lane])
            bad[lane] = 1.0 if clipped else bad[lane]
        nclip = 0
    # 6: combine the survivors
    if method == 1:
        for lane in range(FAST_L):
            p = pu + np.uint64(lane)
            image[p] = F[_MED, lane]
            uncert[p] = MAD_TO_STD * F[_D1, lane] / np.sqrt(n)
            count[p] = n
    else:
        _sums(Y, F, n, weight, has_weight, nclip > 0)
        for lane in range(FAST_L):
            p = pu + np.uint64(lane)
            k = F[_K, lane]
            sd = np.sqrt(F[_SS, lane] / k)
            if method == 0:
                img = F[_SWY, lane] / F[_SW, lane] if has_weight else F[_MEAN, lane]
                unc = sd / np.sqrt(k)
            else:
                img = F[_SWY, lane] if has_weight else F[_SY, lane]
                unc = sd * np.sqrt(k)
            # nothing survives (zero-width bounds between two middle values): NaN, as the
            # per-pixel path writes it
            kept = np.int32(k)
            image[p] = img if kept > 0 else _NAN
            uncert[p] = unc if kept > 0 else _NAN
            count[p] = kept
    # 7: rejected samples per frame, over the lanes this path handled
    if rej.size > 0 and nclip > 0:
        for i in range(n):
            r = 0
            for lane in range(FAST_L):
                y = Y[i, lane]
                drop = (y < F[_LO, lane]) | (y > F[_HI, lane])
                r += 1 if (bad[lane] == 0.0) & drop else 0
            rej[i] += r
    nbad = 0
    for lane in range(FAST_L):
        nbad += 1 if bad[lane] != 0.0 else 0
    return nbad


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _sums(Y, F, n, weight, has_weight, clipped):
    """Frame-order sums over the survivors: ``F[_SY]``, ``F[_K]``, ``F[_MEAN]``, ``F[_SS]``
    (and ``F[_SWY]``, ``F[_SW]`` with weights). ``clipped``: some lane dropped a value."""
    for lane in range(FAST_L):
        F[_SY, lane] = 0.0
        F[_SWY, lane] = 0.0
        F[_SW, lane] = 0.0
        F[_SS, lane] = 0.0
    if not clipped:
        for i in range(n):
            for lane in range(FAST_L):
                F[_SY, lane] += Y[i, lane]
        for lane in range(FAST_L):
            F[_K, lane] = n
            F[_MEAN, lane] = F[_SY, lane] / n
        for i in range(n):
            for lane in range(FAST_L):
                dy = Y[i, lane] - F[_MEAN, lane]
                F[_SS, lane] += dy * dy
        if has_weight:
            for i in range(n):
                wi = weight[i]
                for lane in range(FAST_L):
                    F[_SWY, lane] += wi * Y[i, lane]
                    F[_SW, lane] += wi
        return
    for lane in range(FAST_L):
        F[_K, lane] = 0.0
    for i in range(n):
        for lane in range(FAST_L):
            y = Y[i, lane]
            drop = (y < F[_LO, lane]) | (y > F[_HI, lane])
            F[_SY, lane] += 0.0 if drop else y
            F[_K, lane] += 0.0 if drop else 1.0
    for lane in range(FAST_L):
        F[_MEAN, lane] = F[_SY, lane] / F[_K, lane]
    for i in range(n):
        for lane in range(FAST_L):
            y = Y[i, lane]
            drop = (y < F[_LO, lane]) | (y > F[_HI, lane])
            dy = y - F[_MEAN, lane]
            F[_SS, lane] += 0.0 if drop else dy * dy
    if has_weight:
        for i in range(n):
            wi = weight[i]
            for lane in range(FAST_L):
                y = Y[i, lane]
                drop = (y < F[_LO, lane]) | (y > F[_HI, lane])
                F[_SWY, lane] += 0.0 if drop else wi * y
                F[_SW, lane] += 0.0 if drop else wi
