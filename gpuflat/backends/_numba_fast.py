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

from ._numba_merges import MAX_IN_REGISTERS, merge_in_registers
from ._numba_ops import hi, lo

# the digest of _numba_merges.py and _numba_ops.py (see _networks.DEPENDS_ON)
_DEPENDS_ON = "77f44e58aad567ec"

FAST_L = 64  # lanes per block (the same as the generic block path's)
# prefetch distance, in pixels per frame row: 4 blocks ahead, into L2 (``_prefetch``). With
# 1024 pixels into L1, 40 frames' lines in flight overflow L1 before their use; this was
# 5-20% faster for 40 frames in memory (noisy), the same for 15
_PF = 256
_BIG = 1e300
MAD_TO_STD = 1.482602218505602
_INF = np.inf
_NAN = np.nan
# The block's scratch is one flat float64 array ``W`` (see ``scratch_size``) whose rows of
# FAST_L lanes sit at offsets that are compile-time constants (or a row index times
# FAST_L): LLVM then proves that the rows do not overlap and emits no runtime overlap
# checks in the lane loops. Unsigned offsets: no wraparound selects, vector loads/stores.
_LU = np.uint64(FAST_L)
# float lane rows: per-lane results, then the flags, then the sorted values T, then the
# scaled values Y in frame order
_MED, _D1, _D2, _LO, _HI, _SY, _K, _MEAN, _SS, _SWY, _SW = (
    np.uint64(r * FAST_L) for r in range(11)
)
NROWS_F = 11
_OBAD = np.uint64(11 * FAST_L)
_PINF = np.uint64(12 * FAST_L)  # a row of +inf
_MINF = np.uint64(13 * FAST_L)  # a row of -inf
_OT = np.uint64(14 * FAST_L)
# then one run of 37 rows per 16 frames: T (sorted values), Y (values in frame order), the
# run's flags and sums, so that the loop that fills a run addresses one base at constant offsets
_RUN = 37
_RFLAGS = np.uint64(32 * FAST_L)
_RSYIN = np.uint64(33 * FAST_L)  # the frame-order sum of the frames before the run
_RSY = np.uint64(34 * FAST_L)  # ... and of the run's frames too
_RMEAN = np.uint64(35 * FAST_L)  # the unclipped mean and sum of squared deviations, as if
_RSS = np.uint64(36 * FAST_L)  # the run's frames were all (right when n <= 16)
# row offsets 0..15 (unsigned: an int64 literal would make the sum float64)
_R0 = np.uint64(0 * FAST_L)
_R1 = np.uint64(1 * FAST_L)
_R2 = np.uint64(2 * FAST_L)
_R3 = np.uint64(3 * FAST_L)
_R4 = np.uint64(4 * FAST_L)
_R5 = np.uint64(5 * FAST_L)
_R6 = np.uint64(6 * FAST_L)
_R7 = np.uint64(7 * FAST_L)
_R8 = np.uint64(8 * FAST_L)
_R9 = np.uint64(9 * FAST_L)
_R10 = np.uint64(10 * FAST_L)
_R11 = np.uint64(11 * FAST_L)
_R12 = np.uint64(12 * FAST_L)
_R13 = np.uint64(13 * FAST_L)
_R14 = np.uint64(14 * FAST_L)
_R15 = np.uint64(15 * FAST_L)
_R16 = np.uint64(16 * FAST_L)


def scratch_size(n) -> int:
    """Length of the flat scratch array ``fast_block`` needs for n frames: 14 rows, then a
    run of 37 rows per 16 frames."""
    return (14 + _RUN * ((n + 15) // 16)) * FAST_L


@nb.njit(cache=True, nogil=True, inline="always")
def _trow(i):
    """Offset of sorted row i in the scratch (its Y row is ``_R16`` further)."""
    return _OT + np.uint64((i >> 4) * _RUN + (i & 15)) * _LU


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
        # read, locality 2 (x86: prefetcht1, into L2), data cache
        builder.call(
            fn,
            [
                builder.bitcast(ptr, i8p),
                ir.Constant(i32, 0),
                ir.Constant(i32, 2),
                ir.Constant(i32, 1),
            ],
        )
        return context.get_dummy_value()

    return sig, codegen


def _llvm_float_op(name):
    """A numba intrinsic calling LLVM's ``llvm.<name>.f64`` on two float64s."""

    @intrinsic
    def op(typingctx, a, b):
        sig = types.float64(types.float64, types.float64)

        def codegen(context, builder, signature, args):
            d = ir.DoubleType()
            fnty = ir.FunctionType(d, [d, d])
            fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.{name}.f64")
            return builder.call(fn, args)

        return sig, codegen

    return op


# The smaller and the larger of two values where a row is loaded and then stored back in
# place (the merge through memory): for the values this path vouches for (no NaN, no
# zeros) the same as ``_numba_ops.lo``/``hi``; a select there would become a masked store (LLVM
# stores only the lanes that change), which is slow and from which the next comparator's
# load cannot forward; these become vminpd/vmaxpd (with a check for NaN) and plain stores.
_minnum = _llvm_float_op("minnum")
_maxnum = _llvm_float_op("maxnum")


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


@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _load_sort16(data, scale, n, b, pu, W):
    """Frames ``b .. b+15`` of one block (b a multiple of 16), in one lane loop and in
    registers: ``Y`` rows get the scaled values (rows past n repeat frame n - 1), ``T``
    rows the same values sorted by Green's 60-comparator network (frames past n are
    +inf, which every comparator leaves in place), the run's flags 1.0 where a value is
    not ``0 < |y| <= 1e300``, else 0.0. The run's frame-order sum goes on from its row
    ``_RSYIN`` (set by the caller; adding +0.0 for the frames past n changes nothing, the
    sum being no -0.0), and ``_RMEAN`` and ``_RSS`` get the unclipped mean and sum of
    squared deviations as if these were all the frames (right when n <= 16). Every row
    the loop touches is at a constant offset from one base."""
    ot = _trow(b)
    oyb = ot + _R16
    ob = ot + _RFLAGS
    m = min(16, n - b)  # frames of this run
    r0 = min(b + 0, n - 1)
    r1 = min(b + 1, n - 1)
    r2 = min(b + 2, n - 1)
    r3 = min(b + 3, n - 1)
    r4 = min(b + 4, n - 1)
    r5 = min(b + 5, n - 1)
    r6 = min(b + 6, n - 1)
    r7 = min(b + 7, n - 1)
    r8 = min(b + 8, n - 1)
    r9 = min(b + 9, n - 1)
    r10 = min(b + 10, n - 1)
    r11 = min(b + 11, n - 1)
    r12 = min(b + 12, n - 1)
    r13 = min(b + 13, n - 1)
    r14 = min(b + 14, n - 1)
    r15 = min(b + 15, n - 1)
    s0 = scale[r0]
    s1 = scale[r1]
    s2 = scale[r2]
    s3 = scale[r3]
    s4 = scale[r4]
    s5 = scale[r5]
    s6 = scale[r6]
    s7 = scale[r7]
    s8 = scale[r8]
    s9 = scale[r9]
    s10 = scale[r10]
    s11 = scale[r11]
    s12 = scale[r12]
    s13 = scale[r13]
    s14 = scale[r14]
    s15 = scale[r15]
    v0 = b + 0 < n
    v1 = b + 1 < n
    v2 = b + 2 < n
    v3 = b + 3 < n
    v4 = b + 4 < n
    v5 = b + 5 < n
    v6 = b + 6 < n
    v7 = b + 7 < n
    v8 = b + 8 < n
    v9 = b + 9 < n
    v10 = b + 10 < n
    v11 = b + 11 < n
    v12 = b + 12 < n
    v13 = b + 13 < n
    v14 = b + 14 < n
    v15 = b + 15 < n
    for lane in range(_LU):
        p = pu + lane
        y0 = np.float64(data[r0, p]) * s0
        y1 = np.float64(data[r1, p]) * s1
        y2 = np.float64(data[r2, p]) * s2
        y3 = np.float64(data[r3, p]) * s3
        y4 = np.float64(data[r4, p]) * s4
        y5 = np.float64(data[r5, p]) * s5
        y6 = np.float64(data[r6, p]) * s6
        y7 = np.float64(data[r7, p]) * s7
        y8 = np.float64(data[r8, p]) * s8
        y9 = np.float64(data[r9, p]) * s9
        y10 = np.float64(data[r10, p]) * s10
        y11 = np.float64(data[r11, p]) * s11
        y12 = np.float64(data[r12, p]) * s12
        y13 = np.float64(data[r13, p]) * s13
        y14 = np.float64(data[r14, p]) * s14
        y15 = np.float64(data[r15, p]) * s15
        W[oyb + _R0 + lane] = y0
        W[oyb + _R1 + lane] = y1
        W[oyb + _R2 + lane] = y2
        W[oyb + _R3 + lane] = y3
        W[oyb + _R4 + lane] = y4
        W[oyb + _R5 + lane] = y5
        W[oyb + _R6 + lane] = y6
        W[oyb + _R7 + lane] = y7
        W[oyb + _R8 + lane] = y8
        W[oyb + _R9 + lane] = y9
        W[oyb + _R10 + lane] = y10
        W[oyb + _R11 + lane] = y11
        W[oyb + _R12 + lane] = y12
        W[oyb + _R13 + lane] = y13
        W[oyb + _R14 + lane] = y14
        W[oyb + _R15 + lane] = y15
        ok = True
        ok &= (abs(y0) > 0.0) & (abs(y0) <= _BIG)
        ok &= (abs(y1) > 0.0) & (abs(y1) <= _BIG)
        ok &= (abs(y2) > 0.0) & (abs(y2) <= _BIG)
        ok &= (abs(y3) > 0.0) & (abs(y3) <= _BIG)
        ok &= (abs(y4) > 0.0) & (abs(y4) <= _BIG)
        ok &= (abs(y5) > 0.0) & (abs(y5) <= _BIG)
        ok &= (abs(y6) > 0.0) & (abs(y6) <= _BIG)
        ok &= (abs(y7) > 0.0) & (abs(y7) <= _BIG)
        ok &= (abs(y8) > 0.0) & (abs(y8) <= _BIG)
        ok &= (abs(y9) > 0.0) & (abs(y9) <= _BIG)
        ok &= (abs(y10) > 0.0) & (abs(y10) <= _BIG)
        ok &= (abs(y11) > 0.0) & (abs(y11) <= _BIG)
        ok &= (abs(y12) > 0.0) & (abs(y12) <= _BIG)
        ok &= (abs(y13) > 0.0) & (abs(y13) <= _BIG)
        ok &= (abs(y14) > 0.0) & (abs(y14) <= _BIG)
        ok &= (abs(y15) > 0.0) & (abs(y15) <= _BIG)
        W[ob + lane] = 0.0 if ok else 1.0
        sy = W[ot + _RSYIN + lane]
        sy += y0 if v0 else 0.0
        sy += y1 if v1 else 0.0
        sy += y2 if v2 else 0.0
        sy += y3 if v3 else 0.0
        sy += y4 if v4 else 0.0
        sy += y5 if v5 else 0.0
        sy += y6 if v6 else 0.0
        sy += y7 if v7 else 0.0
        sy += y8 if v8 else 0.0
        sy += y9 if v9 else 0.0
        sy += y10 if v10 else 0.0
        sy += y11 if v11 else 0.0
        sy += y12 if v12 else 0.0
        sy += y13 if v13 else 0.0
        sy += y14 if v14 else 0.0
        sy += y15 if v15 else 0.0
        W[ot + _RSY + lane] = sy
        mean = sy / m
        W[ot + _RMEAN + lane] = mean
        ss = 0.0
        d0 = y0 - mean
        ss += d0 * d0 if v0 else 0.0
        d1 = y1 - mean
        ss += d1 * d1 if v1 else 0.0
        d2 = y2 - mean
        ss += d2 * d2 if v2 else 0.0
        d3 = y3 - mean
        ss += d3 * d3 if v3 else 0.0
        d4 = y4 - mean
        ss += d4 * d4 if v4 else 0.0
        d5 = y5 - mean
        ss += d5 * d5 if v5 else 0.0
        d6 = y6 - mean
        ss += d6 * d6 if v6 else 0.0
        d7 = y7 - mean
        ss += d7 * d7 if v7 else 0.0
        d8 = y8 - mean
        ss += d8 * d8 if v8 else 0.0
        d9 = y9 - mean
        ss += d9 * d9 if v9 else 0.0
        d10 = y10 - mean
        ss += d10 * d10 if v10 else 0.0
        d11 = y11 - mean
        ss += d11 * d11 if v11 else 0.0
        d12 = y12 - mean
        ss += d12 * d12 if v12 else 0.0
        d13 = y13 - mean
        ss += d13 * d13 if v13 else 0.0
        d14 = y14 - mean
        ss += d14 * d14 if v14 else 0.0
        d15 = y15 - mean
        ss += d15 * d15 if v15 else 0.0
        W[ot + _RSS + lane] = ss
        x0 = y0 if v0 else _INF
        x1 = y1 if v1 else _INF
        x2 = y2 if v2 else _INF
        x3 = y3 if v3 else _INF
        x4 = y4 if v4 else _INF
        x5 = y5 if v5 else _INF
        x6 = y6 if v6 else _INF
        x7 = y7 if v7 else _INF
        x8 = y8 if v8 else _INF
        x9 = y9 if v9 else _INF
        x10 = y10 if v10 else _INF
        x11 = y11 if v11 else _INF
        x12 = y12 if v12 else _INF
        x13 = y13 if v13 else _INF
        x14 = y14 if v14 else _INF
        x15 = y15 if v15 else _INF
        x0, x13 = lo(x0, x13), hi(x0, x13)
        x1, x12 = lo(x1, x12), hi(x1, x12)
        x2, x15 = lo(x2, x15), hi(x2, x15)
        x3, x14 = lo(x3, x14), hi(x3, x14)
        x4, x8 = lo(x4, x8), hi(x4, x8)
        x5, x6 = lo(x5, x6), hi(x5, x6)
        x7, x11 = lo(x7, x11), hi(x7, x11)
        x9, x10 = lo(x9, x10), hi(x9, x10)
        x0, x5 = lo(x0, x5), hi(x0, x5)
        x1, x7 = lo(x1, x7), hi(x1, x7)
        x2, x9 = lo(x2, x9), hi(x2, x9)
        x3, x4 = lo(x3, x4), hi(x3, x4)
        x6, x13 = lo(x6, x13), hi(x6, x13)
        x8, x14 = lo(x8, x14), hi(x8, x14)
        x10, x15 = lo(x10, x15), hi(x10, x15)
        x11, x12 = lo(x11, x12), hi(x11, x12)
        x0, x1 = lo(x0, x1), hi(x0, x1)
        x2, x3 = lo(x2, x3), hi(x2, x3)
        x4, x5 = lo(x4, x5), hi(x4, x5)
        x6, x8 = lo(x6, x8), hi(x6, x8)
        x7, x9 = lo(x7, x9), hi(x7, x9)
        x10, x11 = lo(x10, x11), hi(x10, x11)
        x12, x13 = lo(x12, x13), hi(x12, x13)
        x14, x15 = lo(x14, x15), hi(x14, x15)
        x0, x2 = lo(x0, x2), hi(x0, x2)
        x1, x3 = lo(x1, x3), hi(x1, x3)
        x4, x10 = lo(x4, x10), hi(x4, x10)
        x5, x11 = lo(x5, x11), hi(x5, x11)
        x6, x7 = lo(x6, x7), hi(x6, x7)
        x8, x9 = lo(x8, x9), hi(x8, x9)
        x12, x14 = lo(x12, x14), hi(x12, x14)
        x13, x15 = lo(x13, x15), hi(x13, x15)
        x1, x2 = lo(x1, x2), hi(x1, x2)
        x3, x12 = lo(x3, x12), hi(x3, x12)
        x4, x6 = lo(x4, x6), hi(x4, x6)
        x5, x7 = lo(x5, x7), hi(x5, x7)
        x8, x10 = lo(x8, x10), hi(x8, x10)
        x9, x11 = lo(x9, x11), hi(x9, x11)
        x13, x14 = lo(x13, x14), hi(x13, x14)
        x1, x4 = lo(x1, x4), hi(x1, x4)
        x2, x6 = lo(x2, x6), hi(x2, x6)
        x5, x8 = lo(x5, x8), hi(x5, x8)
        x7, x10 = lo(x7, x10), hi(x7, x10)
        x9, x13 = lo(x9, x13), hi(x9, x13)
        x11, x14 = lo(x11, x14), hi(x11, x14)
        x2, x4 = lo(x2, x4), hi(x2, x4)
        x3, x6 = lo(x3, x6), hi(x3, x6)
        x9, x12 = lo(x9, x12), hi(x9, x12)
        x11, x13 = lo(x11, x13), hi(x11, x13)
        x3, x5 = lo(x3, x5), hi(x3, x5)
        x6, x8 = lo(x6, x8), hi(x6, x8)
        x7, x9 = lo(x7, x9), hi(x7, x9)
        x10, x12 = lo(x10, x12), hi(x10, x12)
        x3, x4 = lo(x3, x4), hi(x3, x4)
        x5, x6 = lo(x5, x6), hi(x5, x6)
        x7, x8 = lo(x7, x8), hi(x7, x8)
        x9, x10 = lo(x9, x10), hi(x9, x10)
        x11, x12 = lo(x11, x12), hi(x11, x12)
        x6, x7 = lo(x6, x7), hi(x6, x7)
        x8, x9 = lo(x8, x9), hi(x8, x9)
        W[ot + _R0 + lane] = x0
        W[ot + _R1 + lane] = x1
        W[ot + _R2 + lane] = x2
        W[ot + _R3 + lane] = x3
        W[ot + _R4 + lane] = x4
        W[ot + _R5 + lane] = x5
        W[ot + _R6 + lane] = x6
        W[ot + _R7 + lane] = x7
        W[ot + _R8 + lane] = x8
        W[ot + _R9 + lane] = x9
        W[ot + _R10 + lane] = x10
        W[ot + _R11 + lane] = x11
        W[ot + _R12 + lane] = x12
        W[ot + _R13 + lane] = x13
        W[ot + _R14 + lane] = x14
        W[ot + _R15 + lane] = x15


@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _load_sort8(data, scale, n, b, pu, W):
    """A last run of at most 8 frames (n > 16, ``n - b <= 8``): ``_load_sort16``'s work
    for frames ``b .. b+7`` with the 19-comparator network for 8 inputs (rows past n are
    +inf there, and the run's rows from 8 on are never read). The unclipped mean and sum
    of squares are left out: for n > 16 the caller makes them over all the frames."""
    ot = _trow(b)
    oyb = ot + _R16
    ob = ot + _RFLAGS
    r0 = min(b + 0, n - 1)
    r1 = min(b + 1, n - 1)
    r2 = min(b + 2, n - 1)
    r3 = min(b + 3, n - 1)
    r4 = min(b + 4, n - 1)
    r5 = min(b + 5, n - 1)
    r6 = min(b + 6, n - 1)
    r7 = min(b + 7, n - 1)
    s0 = scale[r0]
    s1 = scale[r1]
    s2 = scale[r2]
    s3 = scale[r3]
    s4 = scale[r4]
    s5 = scale[r5]
    s6 = scale[r6]
    s7 = scale[r7]
    v0 = b + 0 < n
    v1 = b + 1 < n
    v2 = b + 2 < n
    v3 = b + 3 < n
    v4 = b + 4 < n
    v5 = b + 5 < n
    v6 = b + 6 < n
    v7 = b + 7 < n
    for lane in range(_LU):
        p = pu + lane
        y0 = np.float64(data[r0, p]) * s0
        y1 = np.float64(data[r1, p]) * s1
        y2 = np.float64(data[r2, p]) * s2
        y3 = np.float64(data[r3, p]) * s3
        y4 = np.float64(data[r4, p]) * s4
        y5 = np.float64(data[r5, p]) * s5
        y6 = np.float64(data[r6, p]) * s6
        y7 = np.float64(data[r7, p]) * s7
        W[oyb + _R0 + lane] = y0
        W[oyb + _R1 + lane] = y1
        W[oyb + _R2 + lane] = y2
        W[oyb + _R3 + lane] = y3
        W[oyb + _R4 + lane] = y4
        W[oyb + _R5 + lane] = y5
        W[oyb + _R6 + lane] = y6
        W[oyb + _R7 + lane] = y7
        ok = True
        ok &= (abs(y0) > 0.0) & (abs(y0) <= _BIG)
        ok &= (abs(y1) > 0.0) & (abs(y1) <= _BIG)
        ok &= (abs(y2) > 0.0) & (abs(y2) <= _BIG)
        ok &= (abs(y3) > 0.0) & (abs(y3) <= _BIG)
        ok &= (abs(y4) > 0.0) & (abs(y4) <= _BIG)
        ok &= (abs(y5) > 0.0) & (abs(y5) <= _BIG)
        ok &= (abs(y6) > 0.0) & (abs(y6) <= _BIG)
        ok &= (abs(y7) > 0.0) & (abs(y7) <= _BIG)
        W[ob + lane] = 0.0 if ok else 1.0
        sy = W[ot + _RSYIN + lane]
        sy += y0 if v0 else 0.0
        sy += y1 if v1 else 0.0
        sy += y2 if v2 else 0.0
        sy += y3 if v3 else 0.0
        sy += y4 if v4 else 0.0
        sy += y5 if v5 else 0.0
        sy += y6 if v6 else 0.0
        sy += y7 if v7 else 0.0
        W[ot + _RSY + lane] = sy
        x0 = y0 if v0 else _INF
        x1 = y1 if v1 else _INF
        x2 = y2 if v2 else _INF
        x3 = y3 if v3 else _INF
        x4 = y4 if v4 else _INF
        x5 = y5 if v5 else _INF
        x6 = y6 if v6 else _INF
        x7 = y7 if v7 else _INF
        x0, x2 = lo(x0, x2), hi(x0, x2)
        x1, x3 = lo(x1, x3), hi(x1, x3)
        x4, x6 = lo(x4, x6), hi(x4, x6)
        x5, x7 = lo(x5, x7), hi(x5, x7)
        x0, x4 = lo(x0, x4), hi(x0, x4)
        x1, x5 = lo(x1, x5), hi(x1, x5)
        x2, x6 = lo(x2, x6), hi(x2, x6)
        x3, x7 = lo(x3, x7), hi(x3, x7)
        x0, x1 = lo(x0, x1), hi(x0, x1)
        x2, x3 = lo(x2, x3), hi(x2, x3)
        x4, x5 = lo(x4, x5), hi(x4, x5)
        x6, x7 = lo(x6, x7), hi(x6, x7)
        x2, x4 = lo(x2, x4), hi(x2, x4)
        x3, x5 = lo(x3, x5), hi(x3, x5)
        x1, x4 = lo(x1, x4), hi(x1, x4)
        x3, x6 = lo(x3, x6), hi(x3, x6)
        x1, x2 = lo(x1, x2), hi(x1, x2)
        x3, x4 = lo(x3, x4), hi(x3, x4)
        x5, x6 = lo(x5, x6), hi(x5, x6)
        W[ot + _R0 + lane] = x0
        W[ot + _R1 + lane] = x1
        W[ot + _R2 + lane] = x2
        W[ot + _R3 + lane] = x3
        W[ot + _R4 + lane] = x4
        W[ot + _R5 + lane] = x5
        W[ot + _R6 + lane] = x6
        W[ot + _R7 + lane] = x7


@nb.njit(cache=True, nogil=True, inline="always")
def _dmax(a, b):
    return a if a > b else b


@nb.njit(cache=True, nogil=True, inline="always")
def _dev_rows(h1, r, i):
    """Offsets of the two rows of split i of the r-th smallest deviation: A[i-1] from
    ``med - W[ra]`` and B[r-i] from ``W[rb] - med``; the sentinel rows stand for the
    missing side (``med - inf`` and ``-inf - med`` are -inf)."""
    ra = _PINF if i == 0 else _trow(h1 - (i - 1))
    rb = _MINF if i == r + 1 else _trow(h1 + 1 + r - i)
    return ra, rb


@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _kth(W, out, h1, n, r):
    """``W[out + lane]`` = the r-th smallest (0-based) of the deviations, per lane: the
    union of A[j] = med - T[h1-j] (j = 0..h1) and B[j] = T[h1+1+j] - med (j = 0..n-h1-2),
    which is ``min_i max(A[i-1], B[r-i])`` over the splits i. Four splits per lane loop
    (the last repeated to fill a four: min is idempotent), the running minimum in a
    register and the stored value never a select of the loaded one (which LLVM would
    make a masked store, and a masked store forwards to no load)."""
    p = h1 + 1
    q = n - p
    lo_i = max(0, r + 1 - q)
    hi_i = min(p, r + 1)
    for lane in range(_LU):
        W[out + lane] = _INF
    for i0 in range(lo_i, hi_i + 1, 4):
        a0, b0 = _dev_rows(h1, r, i0)
        a1, b1 = _dev_rows(h1, r, min(i0 + 1, hi_i))
        a2, b2 = _dev_rows(h1, r, min(i0 + 2, hi_i))
        a3, b3 = _dev_rows(h1, r, min(i0 + 3, hi_i))
        for lane in range(_LU):
            m = W[_MED + lane]
            c0 = _dmax(m - W[a0 + lane], W[b0 + lane] - m)
            c1 = _dmax(m - W[a1 + lane], W[b1 + lane] - m)
            c2 = _dmax(m - W[a2 + lane], W[b2 + lane] - m)
            c3 = _dmax(m - W[a3 + lane], W[b3 + lane] - m)
            acc = W[out + lane]
            acc = c0 if c0 < acc else acc
            acc = c1 if c1 < acc else acc
            acc = c2 if c2 < acc else acc
            W[out + lane] = c3 if c3 < acc else acc


def size_class(n: int) -> tuple:
    """The fast path's size class of n frames, as a tuple of that many zeros: 1 for
    n <= 16 (one run, sorted in registers), 2 to 5 for the merges in registers of up to
    24, 32, 40 and 48 frames, 6 past ``MAX_IN_REGISTERS`` (a lane loop per comparator).

    The class rides in the numba type of the argument (a tuple's length is part of it), so
    numba compiles :func:`load_block` once per class, and each specialisation holds only
    its own sort: the untyped pipeline turns ``len(cls)`` into a constant and prunes the
    other branches before anything is inlined or typed. A run of 15 frames compiles
    neither the merges nor the second run's loads."""
    if n <= 16:
        return (0,)
    return (0,) * ((n - 1) // 8 if n <= MAX_IN_REGISTERS else 6)


@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def load_block(data, scale, n, p0, W, net, cls):
    """Steps 1-3 of a block of ``FAST_L`` pixels from ``p0``: prefetch the block 4 ahead,
    load and scale the values, flag the lanes this path cannot vouch for, sort. ``cls``:
    ``size_class(n)``. For n > 16, each run of 16 frames (the last one, of 8 or fewer, by
    ``_load_sort8``) is loaded and sorted in registers, then the runs are merged: in
    registers up to ``MAX_IN_REGISTERS`` frames (the generated code of ``_numba_merges``),
    else by a lane loop per comparator of ``net`` (``merge_network(n)``). Not inlined into
    its caller: numba's inlining copies the callee's IR once per block and variable, which
    made the first compile of the kernel take minutes."""
    npix = data.shape[1]
    pu = np.uint64(p0)
    pf = np.uint64(min(p0 + _PF, npix - FAST_L))
    for i in range(n):
        for k in range(0, FAST_L, 16):
            _prefetch(data, i, pf + np.uint64(k))
    for lane in range(_LU):
        W[_OT + _RSYIN + lane] = 0.0
    if len(cls) == 1:
        _load_sort16(data, scale, n, 0, pu, W)
        return
    for b in range(0, n, 16):
        if b > 0:
            prev = _trow(b - 16) + _RSY
            nxt = _trow(b) + _RSYIN
            for lane in range(_LU):
                W[nxt + lane] = W[prev + lane]
        if n - b <= 8:  # a short last run: half the loads, 19 comparators instead of 60
            _load_sort8(data, scale, n, b, pu, W)
        else:
            _load_sort16(data, scale, n, b, pu, W)
    if len(cls) <= 5:
        merge_in_registers(W, cls)
        return
    for c in range(net.shape[1]):
        oi = _trow(net[0, c])
        oj = _trow(net[1, c])
        for lane in range(_LU):
            a = W[oi + lane]
            b = W[oj + lane]
            W[oi + lane] = _minnum(a, b)
            W[oj + lane] = _maxnum(a, b)


@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def fast_block(
    data, mask, has_mask, scale, weight, has_weight, prm, p0, W, image, uncert, count, rej
):
    """Steps 4-7 of one full block of ``FAST_L`` pixels from ``p0``, after
    :func:`load_block`; returns the number of lanes left to the per-pixel path (flagged
    nonzero in ``W[_OBAD + lane]``). ``W``: scratch of ``scratch_size(n)``. Compiled once
    for every size class, without reference counting (it allocates nothing and the caller
    holds the arrays)."""
    n, npix = data.shape
    min_value = prm[1]
    max_value = prm[2]
    sigma_low = prm[8]
    sigma_high = prm[9]
    maxiters = prm[10]
    method = prm[11]
    pu = np.uint64(p0)
    pf = np.uint64(min(p0 + _PF, npix - FAST_L))
    last = _trow((n - 1) // 16 * 16)
    for lane in range(_LU):
        W[_OBAD + lane] = W[_OT + _RFLAGS + lane]
        W[_SY + lane] = W[last + _RSY + lane]
        W[_MEAN + lane] = W[_OT + _RMEAN + lane]
        W[_SS + lane] = W[_OT + _RSS + lane]
    for b in range(16, n, 16):
        ob = _trow(b) + _RFLAGS
        for lane in range(_LU):
            W[_OBAD + lane] += W[ob + lane]
    if (min_value > -_INF) | (max_value < _INF):
        for i in range(n):
            for lane in range(_LU):
                x = np.float64(data[i, pu + lane])
                ok = (x >= min_value) & (x <= max_value)
                W[_OBAD + lane] += 0.0 if ok else 1.0
    if has_mask:
        for i in range(n):
            _prefetch(mask, i, pf)
            for lane in range(_LU):
                W[_OBAD + lane] += 0.0 if mask[i, pu + lane] == 0 else 1.0
    # 5: one iteration of sigma clipping over all n frames
    h1 = (n - 1) // 2
    h2 = n // 2
    t1 = _trow(h1)
    t2 = _trow(h2)
    tn = _trow(n - 1)
    for lane in range(_LU):
        W[_MED + lane] = (W[t1 + lane] + W[t2 + lane]) * 0.5
        W[_PINF + lane] = _INF
        W[_MINF + lane] = -_INF
    _kth(W, _D1, h1, n, h1)
    if h2 != h1:
        _kth(W, _D2, h1, n, h2)
    else:
        for lane in range(_LU):
            W[_D2 + lane] = W[_D1 + lane]
    nclip = 0
    for lane in range(_LU):
        mad = (W[_D1 + lane] + W[_D2 + lane]) * 0.5
        W[_D1 + lane] = mad
        d = MAD_TO_STD * mad
        c = W[_MED + lane]
        lo = -_INF if sigma_low == _INF else c - sigma_low * d
        hi = _INF if sigma_high == _INF else c + sigma_high * d
        W[_LO + lane] = lo
        W[_HI + lane] = hi
        clipped = ((W[_OT + lane] < lo) | (W[tn + lane] > hi)) & (W[_OBAD + lane] == 0.0)
        W[_K + lane] = 1.0 if clipped else 0.0  # until the sums: the lanes that clip
        nclip += 1 if clipped else 0
    if nclip > 0 and (method == 1 or maxiters != 1):
        # another iteration or a median of fewer survivors: the per-pixel path
        for lane in range(_LU):
            clipped = (W[_OT + lane] < W[_LO + lane]) | (W[tn + lane] > W[_HI + lane])
            W[_OBAD + lane] += 1.0 if clipped else 0.0
        nclip = 0
    # 6: combine the survivors
    if method == 1:
        for lane in range(_LU):
            p = pu + lane
            image[p] = W[_MED + lane]
            uncert[p] = MAD_TO_STD * W[_D1 + lane] / np.sqrt(n)
            count[p] = n
    else:
        if nclip > _FEW_CLIPPED or has_weight or method != 0:
            _sums(W, n, weight, has_weight, nclip > 0)
        else:
            # no weights, the mean, and at most a few lanes that clip: every lane as if
            # nothing clipped (the sums are made, for n <= 16 all of them while loading),
            # then the lanes that clip one by one
            if n > 16:
                _sum_squares(W, n)
            rn = np.sqrt(np.float64(n))
            for lane in range(_LU):
                p = pu + lane
                image[p] = W[_MEAN + lane]
                uncert[p] = np.sqrt(W[_SS + lane] / n) / rn
                count[p] = n
            if nclip > 0:
                _clipped_lanes(W, n, pu, image, uncert, count, rej)
            return _count_bad(W)
        for lane in range(_LU):
            p = pu + lane
            k = W[_K + lane]
            sd = np.sqrt(W[_SS + lane] / k)
            if method == 0:
                img = W[_SWY + lane] / W[_SW + lane] if has_weight else W[_MEAN + lane]
                unc = sd / np.sqrt(k)
            else:
                img = W[_SWY + lane] if has_weight else W[_SY + lane]
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
            oyi = _trow(i) + _R16
            for lane in range(_LU):
                y = W[oyi + lane]
                drop = (y < W[_LO + lane]) | (y > W[_HI + lane])
                r += 1 if (W[_OBAD + lane] == 0.0) & drop else 0
            rej[i] += r
    return _count_bad(W)


# A block where at most this many lanes clip (most of them: with the guide's 5 sigma and a
# MAD width, about one pixel in 200 clips something) redoes those lanes' sums one lane at a
# time, instead of every lane's with the survivors masked (``_sums``): 30-45% faster for 15
# frames on data that clips as flats do.
_FEW_CLIPPED = 16


@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _clipped_lanes(W, n, pu, image, uncert, count, rej):
    """The mean of the survivors for each lane flagged in ``_K`` (one that clips), with
    ``_sums``' arithmetic for one lane, and its rejected samples per frame."""
    for lane in range(FAST_L):
        if W[_K + lane] == 0.0:
            continue
        lo = W[_LO + lane]
        hi = W[_HI + lane]
        sy = 0.0
        k = 0.0
        for i in range(n):
            y = W[_trow(i) + _R16 + lane]
            drop = (y < lo) | (y > hi)
            sy += 0.0 if drop else y
            k += 0.0 if drop else 1.0
            if drop and rej.size > 0:
                rej[i] += 1
        mean = sy / k
        ss = 0.0
        for i in range(n):
            y = W[_trow(i) + _R16 + lane]
            drop = (y < lo) | (y > hi)
            dy = y - mean
            ss += 0.0 if drop else dy * dy
        kept = np.int32(k)
        p = pu + lane
        image[p] = mean if kept > 0 else _NAN
        uncert[p] = np.sqrt(ss / k) / np.sqrt(k) if kept > 0 else _NAN
        count[p] = kept


@nb.njit(cache=True, nogil=True, inline="always")
def _count_bad(W):
    nbad = 0
    for lane in range(_LU):
        nbad += 1 if W[_OBAD + lane] != 0.0 else 0
    return nbad


@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _sum_squares(W, n):
    """``_SS``: the frame-order sum of squared deviations from ``_MEAN`` (whose sum
    ``_SY`` the loading made), four frames per lane loop."""
    for lane in range(_LU):
        W[_MEAN + lane] = W[_SY + lane] / n
        W[_SS + lane] = 0.0
    for i0 in range(0, n, 4):
        o0 = _trow(i0) + _R16
        if i0 + 4 <= n:
            o1 = _trow(i0 + 1) + _R16
            o2 = _trow(i0 + 2) + _R16
            o3 = _trow(i0 + 3) + _R16
            for lane in range(_LU):
                m = W[_MEAN + lane]
                ss = W[_SS + lane]
                d0 = W[o0 + lane] - m
                ss += d0 * d0
                d1 = W[o1 + lane] - m
                ss += d1 * d1
                d2 = W[o2 + lane] - m
                ss += d2 * d2
                d3 = W[o3 + lane] - m
                W[_SS + lane] = ss + d3 * d3
        else:
            for i in range(i0, n):
                o = _trow(i) + _R16
                for lane in range(_LU):
                    d = W[o + lane] - W[_MEAN + lane]
                    W[_SS + lane] += d * d


@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _sums(W, n, weight, has_weight, clipped):
    """Frame-order sums over the survivors: rows ``_SY``, ``_K``, ``_MEAN``, ``_SS`` (and
    ``_SWY``, ``_SW`` with weights). ``clipped``: some lane dropped a value."""
    for lane in range(_LU):
        W[_SY + lane] = 0.0
        W[_SWY + lane] = 0.0
        W[_SW + lane] = 0.0
        W[_SS + lane] = 0.0
    if not clipped:
        for i in range(n):
            oyi = _trow(i) + _R16
            for lane in range(_LU):
                W[_SY + lane] += W[oyi + lane]
        for lane in range(_LU):
            W[_K + lane] = n
            W[_MEAN + lane] = W[_SY + lane] / n
        for i in range(n):
            oyi = _trow(i) + _R16
            for lane in range(_LU):
                dy = W[oyi + lane] - W[_MEAN + lane]
                W[_SS + lane] += dy * dy
        if has_weight:
            for i in range(n):
                wi = weight[i]
                oyi = _trow(i) + _R16
                for lane in range(_LU):
                    W[_SWY + lane] += wi * W[oyi + lane]
                    W[_SW + lane] += wi
        return
    for lane in range(_LU):
        W[_K + lane] = 0.0
    for i in range(n):
        oyi = _trow(i) + _R16
        for lane in range(_LU):
            y = W[oyi + lane]
            drop = (y < W[_LO + lane]) | (y > W[_HI + lane])
            W[_SY + lane] += 0.0 if drop else y
            W[_K + lane] += 0.0 if drop else 1.0
    for lane in range(_LU):
        W[_MEAN + lane] = W[_SY + lane] / W[_K + lane]
    for i in range(n):
        oyi = _trow(i) + _R16
        for lane in range(_LU):
            y = W[oyi + lane]
            drop = (y < W[_LO + lane]) | (y > W[_HI + lane])
            dy = y - W[_MEAN + lane]
            W[_SS + lane] += 0.0 if drop else dy * dy
    if has_weight:
        for i in range(n):
            wi = weight[i]
            oyi = _trow(i) + _R16
            for lane in range(_LU):
                y = W[oyi + lane]
                drop = (y < W[_LO + lane]) | (y > W[_HI + lane])
                W[_SWY + lane] += 0.0 if drop else wi * y
                W[_SW + lane] += 0.0 if drop else wi
