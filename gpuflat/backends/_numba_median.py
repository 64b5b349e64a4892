"""Exact frame median by a sampled bracket: one pass over the frame instead of two.

A strided sample of the usable values gives a value bracket ``[lo, hi]`` around the
median rank. One parallel pass counts the usable values (finite, unmasked), those below
``lo``, and histograms the values inside the bracket by their order-preserving float32
key (``key(hi) - key(lo)`` is small for any frame whose noise is not wild, and only a few
percent of the values fall inside, so the increments are few). When both middle ranks
fall inside the bracket they are read off the histogram exactly; otherwise (an unlucky
sample, a very wide key span) ``select`` returns None and the caller uses the radix
selection, so the result is always the exact median.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _threads

SAMPLE = 1 << 14  # sample size on large frames (its partition is a fixed cost)
MIN_SIZE = 1 << 18  # smaller frames: the radix selection is fast enough
MAX_SPAN = 1 << 17  # histogram bins (keys inside the bracket)
_SUB = 4096  # values per counting sub-block (in L1 for the histogram pass)


@nb.njit(cache=True, nogil=True, inline="always")
def _key(bits):
    """The float32 bit pattern as an unsigned key in the order of the values."""
    return bits ^ np.uint32(0xFFFFFFFF) if bits >> 31 else bits | np.uint32(0x80000000)


# AVX-512: compress into a register and store the whole vector (vpcompressd to memory is
# slow on AMD's cores); elsewhere LLVM's generic compress-store
_AVX512 = bool(llvm.get_host_cpu_features().get("avx512f", False))


@intrinsic
def _compress16(typingctx, a, p, lo, hi, buf, c):
    """Stores the bit patterns of those of ``a[p:p+16]`` inside ``[lo, hi]`` to ``buf[c:]``
    in order (``buf`` needs 16 elements past ``c``); returns how many."""
    sig = types.intp(a, p, lo, hi, buf, c)

    def codegen(context, builder, signature, args):
        aty, _, _, _, bty, _ = signature.args
        arr = context.make_array(aty)(context, builder, args[0])
        src = cgutils.get_item_pointer(context, builder, aty, arr, [args[1]], wraparound=False)
        barr = context.make_array(bty)(context, builder, args[4])
        dst = cgutils.get_item_pointer(context, builder, bty, barr, [args[5]], wraparound=False)
        f32, i32, i1 = ir.FloatType(), ir.IntType(32), ir.IntType(1)
        vf, vi, vb = ir.VectorType(f32, 16), ir.VectorType(i32, 16), ir.VectorType(i1, 16)
        zeros = ir.Constant(vi, [0] * 16)

        def splat(x):
            one = builder.insert_element(ir.Constant(vf, ir.Undefined), x, ir.Constant(i32, 0))
            return builder.shuffle_vector(one, ir.Constant(vf, ir.Undefined), zeros)

        v = builder.load(builder.bitcast(src, vf.as_pointer()), align=4)
        inside = builder.and_(
            builder.fcmp_ordered(">=", v, splat(args[2])),
            builder.fcmp_ordered("<=", v, splat(args[3])),
        )
        bits = builder.bitcast(v, vi)
        out = builder.bitcast(dst, vi.as_pointer())
        if _AVX512:
            fnty = ir.FunctionType(vi, [vi, vi, vb])
            fn = cgutils.get_or_insert_function(
                builder.module, fnty, "llvm.x86.avx512.mask.compress.v16i32"
            )
            builder.store(builder.call(fn, [bits, bits, inside]), out, align=4)
        else:
            fnty = ir.FunctionType(ir.VoidType(), [vi, vi.as_pointer(), vb])
            fn = cgutils.get_or_insert_function(
                builder.module, fnty, "llvm.masked.compressstore.v16i32"
            )
            builder.call(fn, [bits, out, inside])
        i16 = ir.IntType(16)
        pop = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i16, [i16]), "llvm.ctpop.i16"
        )
        k = builder.call(pop, [builder.bitcast(inside, i16)])
        return builder.zext(k, context.get_value_type(types.intp))

    return sig, codegen


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _bracket_part(a, bits, mask, has_mask, p0, p1, lo, hi, klo, h, buf):
    """Values ``[p0, p1)``: (usable, usable below ``lo``); the keys in ``[lo, hi]`` (finite
    bounds, so those values are finite) are counted into ``h[key - klo]``."""
    inf = np.float32(np.inf)
    usable = 0
    below = 0
    for b0 in range(p0, p1, _SUB):
        b1 = min(p1, b0 + _SUB)
        inb = 0
        if has_mask:
            for p in range(b0, b1):
                x = a[p]
                ok = (abs(x) < inf) & (mask[p] == 0)
                usable += 1 if ok else 0
                below += 1 if ok & (x < lo) else 0
                inb += 1 if ok & (x >= lo) & (x <= hi) else 0
        else:
            for p in range(b0, b1):
                x = a[p]
                usable += 1 if abs(x) < inf else 0
                below += 1 if (x < lo) & (abs(x) < inf) else 0
            # the bracket's keys, 16 values at a time by a vector compress
            c = 0
            p = b0
            while p + 16 <= b1:
                c += _compress16(a, p, lo, hi, buf, c)
                p += 16
            for q in range(p, b1):
                buf[c] = bits[q]
                c += 1 if (a[q] >= lo) & (a[q] <= hi) else 0
            for q in range(c):
                h[_key(buf[q]) - klo] += 1
            continue
        if inb == 0:
            continue
        # branch-free compaction of the bracket's keys (a branch on a value that is
        # inside a few percent of the time, at random, costs far more)
        c = 0
        if has_mask:
            for p in range(b0, b1):
                x = a[p]
                buf[c] = bits[p]
                c += 1 if (x >= lo) & (x <= hi) & (mask[p] == 0) else 0
        else:
            for p in range(b0, b1):
                x = a[p]
                buf[c] = bits[p]
                c += 1 if (x >= lo) & (x <= hi) else 0
        for q in range(c):
            h[_key(buf[q]) - klo] += 1
    return usable, below


def _bracket_pass(a, bits, mask, has_mask, nparts, lo, hi, klo, span):
    """(usable values, usable values below ``lo``, histogram of the bracket's keys), the
    frame in ``nparts`` parts, each on a thread of its own (``_threads``)."""
    npix = a.size
    step = (npix + nparts - 1) // nparts

    def part(t):
        hist = np.zeros(span, np.int32)
        counts = _bracket_part(
            a, bits, mask, has_mask, t * step, min(npix, (t + 1) * step), lo, hi, klo, hist,
            np.empty(_SUB + 16, np.uint32),
        )  # fmt: skip
        return counts, hist

    results = _threads.run_parts(part, nparts)
    usable = sum(c[0] for c, _ in results)
    below = sum(c[1] for c, _ in results)
    return (usable, below), np.sum([h for _, h in results], axis=0, dtype=np.int64)


def _value(key):
    raw = key ^ 0x80000000 if key >> 31 else key ^ 0xFFFFFFFF
    return float(np.array(raw, np.uint32).view(np.float32))


def select(a, m, has_mask, nparts, sample=SAMPLE):
    """The exact median of the usable values of the flat float32 ``a`` (``m``: uint8 mask,
    1 = masked) from a sampled bracket, or None when the bracket missed (use the radix
    selection then)."""
    npix = a.size
    step = max(1, npix // sample)
    idx = np.arange(step // 2, npix, step)
    s = a[idx]
    good = np.isfinite(s)
    if has_mask:
        good &= m[idx] == 0
    s = s[good]
    if s.size < 64:
        return None
    # the middle rank of the sample +- 4.5 standard deviations of a sample quantile
    j = s.size // 2
    w = int(4.5 * 0.5 * np.sqrt(s.size)) + 8
    ja, jb = max(0, j - w), min(s.size - 1, j + w)
    part = np.partition(s, (ja, jb))
    lo, hi = part[ja], part[jb]
    # a zero bound as the zero that covers both zeros' keys (-0.0 and +0.0 compare equal,
    # so either can come out of the partition at either end)
    lo = np.float32(-0.0) if lo == 0 else lo
    hi = np.float32(0.0) if hi == 0 else hi
    bits = a.view(np.uint32)
    klo = int(_key(np.float32(lo).view(np.uint32)))
    khi = int(_key(np.float32(hi).view(np.uint32)))
    span = khi - klo + 1
    if not 0 < span <= MAX_SPAN:
        return None
    (usable, below), hist = _bracket_pass(
        a, bits, m, has_mask, nparts, np.float32(lo), np.float32(hi), np.uint32(klo), span
    )
    if usable == 0:
        return None
    r1, r2 = (usable - 1) // 2 - below, usable // 2 - below
    cum = np.cumsum(hist)
    if r1 < 0 or r2 >= cum[-1]:
        return None
    v1, v2 = (_value(klo + int(np.searchsorted(cum, r, side="right"))) for r in (r1, r2))
    return (v1 + v2) * 0.5


# -- levels of frames stored as 8- or 16-bit integers, from their stored bytes --------------


def measures_raw(fmt) -> bool:
    """Whether :func:`raw_level` takes frames stored in ``fmt`` (a ``_frames.RawFormat``):
    8- or 16-bit integers with BSCALE 1 and an integral BZERO of at most 2**23, whose
    values (stored + BZERO) are integers that float32 holds exactly, so that the levels of
    the stored values are those of the converted frame."""
    dt = np.dtype(fmt.dtype)
    return (
        dt.kind in "iu"
        and dt.itemsize <= 2
        and fmt.bscale == 1
        and float(fmt.bzero).is_integer()
        and abs(fmt.bzero) <= 1 << 23
    )


@nb.njit(cache=True, nogil=True, parallel=True)
def _raw_hist(raw, wide, mask, has_mask, blank, has_blank, nparts):
    """Histogram of the stored values' keys (16-bit big-endian signed: value + 32768;
    8-bit: the value), BLANK and masked pixels left out. Four sub-histograms per part, so
    that runs of equal values do not wait on one counter."""
    size = 2 if wide else 1
    npix = raw.size // size
    nbins = 65536 if wide else 256
    h = np.zeros((nparts, 4, nbins), np.int64)
    step = (npix + nparts - 1) // nparts
    for t in nb.prange(nparts):
        ht = h[t]
        for p in range(t * step, min(npix, (t + 1) * step)):
            if wide:
                k = ((np.int64(raw[2 * p]) << 8) | np.int64(raw[2 * p + 1])) ^ 0x8000
            else:
                k = np.int64(raw[p])
            skip = (has_blank and k == blank) or (has_mask and mask[p] != 0)
            if not skip:
                ht[p & 3, k] += 1
    out = np.zeros(nbins, np.int64)
    for t in range(nparts):
        for j in range(4):
            for k in range(nbins):
                out[k] += h[t, j, k]
    return out


def raw_level(raw, fmt, mask, how: str) -> float:
    """The level of one whole frame from its stored bytes (``raw``: uint8, as in the file;
    ``fmt`` accepted by :func:`measures_raw`), over its unmasked non-BLANK pixels: exactly
    what ``frame_level`` gives on the converted frame ("median": the two middle values
    averaged in float64; "mean": the sum, exact in float64 for these integers, over the
    count). NaN when no pixel is usable."""
    wide = np.dtype(fmt.dtype).itemsize == 2
    offset = 32768 if wide else 0  # key - offset = stored value
    # a BLANK no stored value can equal blanks nothing
    has_blank = fmt.blank is not None and -offset <= fmt.blank < (65536 if wide else 256) - offset
    blank = fmt.blank + offset if has_blank else 0
    has_mask = mask is not None
    m = np.ascontiguousarray(mask != 0).view(np.uint8).ravel() if has_mask else _NO_MASK
    hist = _raw_hist(raw, wide, m, has_mask, blank, has_blank, nb.get_num_threads())
    k = int(hist.sum())
    if k == 0:
        return float("nan")
    values = np.arange(hist.size, dtype=np.float64) - offset + float(fmt.bzero)
    if how == "mean":
        return float(np.dot(hist.astype(np.float64), values)) / k
    cum = np.cumsum(hist)
    v1, v2 = (float(values[np.searchsorted(cum, r, side="right")]) for r in ((k - 1) // 2, k // 2))
    return (v1 + v2) * 0.5


_NO_MASK = np.zeros(1, np.uint8)
