"""ccdproc's ``ccdmask`` (IRAF's ccdmask as ccdproc 2.5 ports it, ``byblocks=False``) as
numba kernels: the moving median, the moving percentile sigma and the sigma mask of a
band of rows, and the short-gap filling of ``findbadcolumns``.

ccdproc computes ``medsub = ratio - median_filter(ratio, (nlmed, ncmed))``, then
``percentile_filter(medsub, 69.1 / 30.9, (nlsig, ncsig))``, both SciPy rank filters with
``mode="reflect"`` (d c b a | a b c d | d c b a), whose window of size ``n`` along an axis
covers offsets ``-(n // 2) .. n - n // 2 - 1``; a rank filter returns the element of rank
``k`` (0-based) of its window: ``n // 2`` for the median, ``int(n * p / 100)`` for a
percentile. Here each rank filter slides over a band of rows: every column of the window
is a sorted list of its ``nl`` values (updated by one removal and one insertion per row),
and the window's element of rank ``k`` is tracked as how many of each column's smallest
values lie below it (the counts summing to ``k``), moved by a few steps per column, so a
pixel costs a few passes over the ``nc`` columns instead of a selection over ``nl * nc``
values. That gives exactly the element of rank ``k`` whatever the ties.

Windows holding a NaN are the exception: SciPy's selection (``NI_Select``, Hoare's
partition around the first element, or the sequential minimum / maximum when the rank is
the first / last) compares NaN as neither smaller nor larger, so the value it returns
depends on where the NaN sits. Those pixels are computed by the same algorithm on the
window's values in SciPy's order (row-major over the footprint), so that NaNs give the same
result as ccdproc too. Everything is computed in the data's own float type, as NumPy does.

No ``parallel=True``: ``_threads.run_parts`` runs the parts. This file holds all the code
its cached functions use (numba's cache keys on this file's text only).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import _threads


@nb.njit(cache=True, nogil=True, inline="always")
def _reflect(i, n):
    """SciPy's ``reflect`` extension of index ``i`` into ``[0, n)``."""
    if n == 1:
        return 0
    period = 2 * n
    if i < 0:
        i = -i - 1
    i = i % period
    return i if i < n else period - i - 1


@nb.njit(cache=True, nogil=True, inline="always")
def _key(v):
    """The sort key of a value: NaN sorts as +inf (the kernels never use a window's
    result from the sorted lists when it holds a NaN; they only need a total order)."""
    return np.inf if v != v else v


@nb.njit(cache=True, nogil=True)
def _scipy_select(buf, n, rank):
    """SciPy's ``NI_Select`` (ndimage/src/ni_filters.c) on ``buf[:n]``, in float64."""
    lo, hi = 0, n - 1
    while True:
        if lo == hi:
            return buf[lo]
        x = buf[lo]
        ii, jj = lo - 1, hi + 1
        while True:
            jj -= 1
            while buf[jj] > x:
                jj -= 1
            ii += 1
            while buf[ii] < x:
                ii += 1
            if ii < jj:
                t = buf[ii]
                buf[ii] = buf[jj]
                buf[jj] = t
            else:
                break
        ii = jj - lo + 1
        if rank < ii:
            hi = jj
        else:
            lo = jj + 1
            rank -= ii


@nb.njit(cache=True, nogil=True)
def _window_rank(src, src_r0, nrows, ncols, r, c, nl, nc, rank, buf):
    """The window's element of rank ``rank`` as SciPy computes it (NaN included)."""
    n = 0
    for i in range(nl):
        rr = _reflect(r - nl // 2 + i, nrows) - src_r0
        for j in range(nc):
            buf[n] = src[rr, _reflect(c - nc // 2 + j, ncols)]
            n += 1
    if rank == 0 or rank == n - 1:  # SciPy's minimum / maximum filter (1-D windows here)
        val = buf[0]
        for i in range(1, n):
            if rank == 0:
                if buf[i] < val:
                    val = buf[i]
            elif buf[i] > val:
                val = buf[i]
        return val
    return _scipy_select(buf, n, rank)


@nb.njit(cache=True, nogil=True)
def _sorted_insert(col, m, v):
    """Insert ``v`` into the sorted ``col[:m]`` (which has room for one more)."""
    i = m
    while i > 0 and col[i - 1] > v:
        col[i] = col[i - 1]
        i -= 1
    col[i] = v


@nb.njit(cache=True, nogil=True)
def _sorted_remove(col, m, v):
    """Remove one element equal to ``v`` from the sorted ``col[:m]``."""
    i = 0
    while col[i] != v:
        i += 1
    for t in range(i, m - 1):
        col[t] = col[t + 1]


@nb.njit(cache=True, nogil=True)
def _rank_rows(src, src_r0, nrows, r_a, r_b, nl, nc, k1, k2, out1, out2, out_r0):
    """Order statistics ``k1`` and ``k2`` (0-based; ``k2 < 0``: only ``k1``) of the
    ``nl`` x ``nc`` windows of the output rows ``[r_a, r_b)`` (image rows; ``nrows`` in the
    image) into ``out1[r - out_r0]`` and ``out2[r - out_r0]``. ``src`` holds image rows
    ``[src_r0, src_r0 + len(src))``, which must cover every row the windows reach (after
    reflection). All columns."""
    ncols = src.shape[1]
    dtype = src.dtype
    hl, hc = nl // 2, nc // 2
    cols = np.empty((ncols, nl), dtype)  # each column's window values, sorted (keys)
    nans = np.zeros(ncols, np.int64)  # NaNs in each column's window
    slot_col = np.empty(nc, np.int64)  # the window's columns (image columns), a ring
    p1 = np.empty(nc, np.int64)  # per slot: how many of its values rank below k1
    p2 = np.empty(nc, np.int64)
    buf = np.empty(nl * nc, np.float64)
    two = k2 >= 0
    for r in range(r_a, r_b):
        if r == r_a:  # the columns' sorted lists from scratch
            for c in range(ncols):
                nans[c] = 0
                for i in range(nl):
                    v = src[_reflect(r - hl + i, nrows) - src_r0, c]
                    if v != v:
                        nans[c] += 1
                    _sorted_insert(cols[c], i, _key(v))
        else:  # one row leaves each column's window, one comes in
            rout = _reflect(r - 1 - hl, nrows) - src_r0
            rin = _reflect(r - hl + nl - 1, nrows) - src_r0
            if rout != rin:
                for c in range(ncols):
                    vo = src[rout, c]
                    vi = src[rin, c]
                    if vi != vi:
                        nans[c] += 1
                    if vo != vo:
                        nans[c] -= 1
                    ko, ki = _key(vo), _key(vi)
                    if ko != ki:
                        _sorted_remove(cols[c], nl, ko)
                        _sorted_insert(cols[c], nl - 1, ki)
        # the row: the window at column 0, then slide
        wnan = 0
        for s in range(nc):
            slot_col[s] = -1
        for j in range(nc):
            cc = _reflect(j - hc, ncols)
            slot_col[(j - hc) % nc] = cc
            wnan += nans[cc]
        _start(cols, slot_col, p1, nl, nc, k1)
        if two:
            _start(cols, slot_col, p2, nl, nc, k2)
        for c in range(ncols):
            if c > 0:
                s = (c - 1 - hc) % nc
                old = slot_col[s]
                cc = _reflect(c - hc + nc - 1, ncols)
                wnan += nans[cc] - nans[old]
                slot_col[s] = cc
                _slide(cols, slot_col, p1, nl, nc, k1, s)
                if two:
                    _slide(cols, slot_col, p2, nl, nc, k2, s)
            o = r - out_r0
            if wnan > 0:
                out1[o, c] = _window_rank(src, src_r0, nrows, ncols, r, c, nl, nc, k1, buf)
                if two:
                    out2[o, c] = _window_rank(src, src_r0, nrows, ncols, r, c, nl, nc, k2, buf)
            else:
                out1[o, c] = _answer(cols, slot_col, p1, nl, nc)
                if two:
                    out2[o, c] = _answer(cols, slot_col, p2, nl, nc)


@nb.njit(cache=True, nogil=True)
def _answer(cols, slot_col, p, nl, nc):
    """The smallest value above the counted ones: the element of rank ``sum(p)``."""
    best = np.inf
    for s in range(nc):
        if p[s] < nl:
            v = cols[slot_col[s], p[s]]
            if v < best:
                best = v
    return best


@nb.njit(cache=True, nogil=True)
def _start(cols, slot_col, p, nl, nc, k):
    for s in range(nc):
        p[s] = 0
    _adjust(cols, slot_col, p, nl, nc, k, 0)


@nb.njit(cache=True, nogil=True)
def _adjust(cols, slot_col, p, nl, nc, k, total):
    """Move the counts (summing to ``total``) until they sum to ``k``, each step taking
    the smallest value above the counted ones, or giving back the largest counted one."""
    while total < k:
        best, bs = np.inf, -1
        for s in range(nc):
            if p[s] < nl:
                v = cols[slot_col[s], p[s]]
                if bs < 0 or v < best:
                    best, bs = v, s
        p[bs] += 1
        total += 1
    while total > k:
        best, bs = -np.inf, -1
        for s in range(nc):
            if p[s] > 0:
                v = cols[slot_col[s], p[s] - 1]
                if bs < 0 or v > best:
                    best, bs = v, s
        p[bs] -= 1
        total -= 1


@nb.njit(cache=True, nogil=True)
def _slide(cols, slot_col, p, nl, nc, k, s):
    """Slot ``s`` has a new column: count its values below the current boundary (the
    element of rank ``k`` before the slide, over the other columns and the old one), then
    move the counts back to ``k``."""
    bound = np.inf
    total = 0
    for t in range(nc):
        if t != s:
            total += p[t]
            if p[t] < nl:
                v = cols[slot_col[t], p[t]]
                if v < bound:
                    bound = v
    col = cols[slot_col[s]]
    lo, hi = 0, nl  # values of the new column below the boundary
    while lo < hi:
        mid = (lo + hi) // 2
        if col[mid] < bound:
            lo = mid + 1
        else:
            hi = mid
    p[s] = lo
    _adjust(cols, slot_col, p, nl, nc, k, total + lo)


@nb.njit(cache=True, nogil=True)
def _medsub_rows(data, d_r0, nrows, r_a, r_b, nl, nc, k, out, out_r0):
    """``out[r - out_r0] = data[r] - median`` for the rows ``[r_a, r_b)``."""
    _rank_rows(data, d_r0, nrows, r_a, r_b, nl, nc, k, -1, out[r_a - out_r0 : r_b - out_r0],
               out[:0], r_a)  # fmt: skip
    for r in range(r_a, r_b):
        o = r - out_r0
        dr = r - d_r0
        for c in range(data.shape[1]):
            out[o, c] = data[dr, c] - out[o, c]


@nb.njit(cache=True, nogil=True)
def _mask_rows(data, d_r0, medsub, m_r0, nrows, r_a, r_b, nl, nc, k_hi, k_lo, factors,
               high, low, mask, mask_r0):  # fmt: skip
    """The sigma mask of the rows ``[r_a, r_b)``: not finite, or ``medsub`` below
    ``-lsigma * sigma`` or above ``hsigma * sigma``, with ``sigma = (high - low) / 2``
    from the 69.1 and 30.9 percentiles of ``medsub`` over ``nl`` x ``nc``; ``factors``
    holds ``-lsigma``, ``hsigma`` and 0.5 in the data's float type (NumPy's arithmetic).
    ``high`` and ``low`` are work rows (at least ``r_b - r_a`` each)."""
    _rank_rows(medsub, m_r0, nrows, r_a, r_b, nl, nc, k_hi, k_lo, high, low, r_a)
    neg_l, pos_h, half = factors[0], factors[1], factors[2]
    for r in range(r_a, r_b):
        o = r - r_a
        for c in range(data.shape[1]):
            v = data[r - d_r0, c]
            m = medsub[r - m_r0, c]
            sigma = (high[o, c] - low[o, c]) * half
            bad = not np.isfinite(v) or m < neg_l * sigma or m > pos_h * sigma
            mask[r - mask_r0, c] = 1 if bad else 0


def medsub_band(data, d_r0, nrows, r_a, r_b, nlmed, ncmed, out, out_r0) -> None:
    """``data - median_filter(data, (nlmed, ncmed))`` for the image rows ``[r_a, r_b)``
    into ``out`` (whose row 0 is image row ``out_r0``), on numba's thread count."""
    k = (nlmed * ncmed) // 2
    bounds = _split(r_a, r_b)

    def part(t):
        a, b = bounds[t], bounds[t + 1]
        if b > a:
            _medsub_rows(data, d_r0, nrows, a, b, nlmed, ncmed, k, out, out_r0)

    _threads.run_parts(part, len(bounds) - 1)


def mask_band(data, d_r0, medsub, m_r0, nrows, r_a, r_b, nlsig, ncsig, lsigma, hsigma,
              mask, mask_r0) -> None:  # fmt: skip
    """The sigma mask of the image rows ``[r_a, r_b)`` into ``mask`` (uint8, row 0 =
    image row ``mask_r0``), ``medsub`` holding the rows the windows reach."""
    n = nlsig * ncsig
    k_hi, k_lo = percentile_rank(n, 69.1), percentile_rank(n, 30.9)
    factors = np.array([-lsigma, hsigma, 0.5], medsub.dtype)
    bounds = _split(r_a, r_b)

    def part(t):
        a, b = bounds[t], bounds[t + 1]
        if b > a:
            high = np.empty((b - a, medsub.shape[1]), medsub.dtype)
            low = np.empty_like(high)
            _mask_rows(data, d_r0, medsub, m_r0, nrows, a, b, nlsig, ncsig, k_hi, k_lo,
                       factors, high, low, mask, mask_r0)  # fmt: skip

    _threads.run_parts(part, len(bounds) - 1)


def percentile_rank(n: int, percentile: float) -> int:
    """SciPy's rank for ``percentile_filter`` over ``n`` values."""
    return n - 1 if percentile == 100.0 else int(float(n) * percentile / 100.0)


def _split(a, b) -> list[int]:
    parts = max(1, min(_threads.parts(), (b - a) // 8 or 1))
    return [a + (b - a) * t // parts for t in range(parts + 1)]


@nb.njit(cache=True, nogil=True)
def fill_short_gaps(mask, ngood):
    """ccdproc's ``findbadcolumns`` pass, literally: in each column, a masked line
    followed within ``ngood + 1`` lines by another masked line with unmasked ones between
    masks the lines from the first up to (not including) the second; the lines are visited
    in order and see the earlier fills. ``mask`` is uint8 (0 / 1), changed in place."""
    nlines, ncols = mask.shape
    for col in range(ncols):
        for line in range(0, nlines - ngood - 1):
            if mask[line, col]:
                for i in range(2, ngood + 2):
                    lend = line + i
                    if mask[lend, col]:
                        full = True
                        for t in range(line, lend + 1):
                            if not mask[t, col]:
                                full = False
                                break
                        if not full:
                            for t in range(line, lend):
                                mask[t, col] = 1
