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

No ``parallel=True``: :mod:`gpuflat.backends._ccdmask` (the Python side: networks, bin
width, bands split over ``_threads.run_parts``) runs the parts. This file holds all the
code its cached functions use (numba's cache keys on this file's text only).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ._numba_ccdmask_net import median_pairs_7x7, sort_columns_7x7

# the digest of the files it calls into (see _networks.DEPENDS_ON)
_DEPENDS_ON = "8967b1b20405a151"


@nb.njit(cache=True, nogil=True)
def _reflect(i, n):
    """SciPy's ``reflect`` extension of index ``i`` into ``[0, n)``."""
    if n == 1:
        return 0
    period = 2 * n
    if i < 0:
        i = -i - 1
    i = i % period
    return i if i < n else period - i - 1


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
def _rank_rows(src, src_r0, nrows, r_a, r_b, nl, nc, ks, outs, out_r0):
    """Order statistics ``ks[q]`` (0-based) of the ``nl`` x ``nc`` windows of the output
    rows ``[r_a, r_b)`` (image rows; ``nrows`` in the image) into ``outs[q, r - out_r0]``.
    ``src`` holds image rows ``[src_r0, src_r0 + len(src))``, which must cover every row
    the windows reach (after reflection). All columns.

    Per window slot (a column of the window, a ring of ``nc``), ``p[q, s]``: how many of
    the slot column's sorted values lie below the element of rank ``ks[q]``; the counts sum
    to ``ks[q]`` and every counted value is <= every other, so that element is the
    smallest value not counted. When the window slides, the new column counts its values
    below the previous element, then single values move in or out of the count (the
    smallest not counted, the largest counted) until the sum is ``ks[q]`` again."""
    ncols = src.shape[1]
    nq = ks.shape[0]
    hl, hc = nl // 2, nc // 2
    cols = np.empty((ncols, nl), src.dtype)  # each column's window values, sorted (keys)
    nans = np.zeros(ncols, np.int64)  # NaNs in each column's window
    slot_col = np.empty(nc, np.int64)  # the window's columns (image columns), a ring
    p = np.zeros((nq, nc), np.int64)
    prev = np.empty(nq, src.dtype)  # the element of rank ks[q] of the window before
    buf = np.empty(nl * nc, np.float64)
    inf = src.dtype.type(np.inf)
    for r in range(r_a, r_b):
        if r == r_a:  # the columns' sorted lists from scratch
            for c in range(ncols):
                nans[c] = 0
                for i in range(nl):
                    v = src[_reflect(r - hl + i, nrows) - src_r0, c]
                    if v != v:
                        nans[c] += 1
                        v = inf
                    t = i  # insertion into the sorted cols[c, :i]
                    while t > 0 and cols[c, t - 1] > v:
                        cols[c, t] = cols[c, t - 1]
                        t -= 1
                    cols[c, t] = v
        else:  # one row leaves each column's window, one comes in
            rout = _reflect(r - 1 - hl, nrows) - src_r0
            rin = _reflect(r - hl + nl - 1, nrows) - src_r0
            if rout != rin:
                for c in range(ncols):
                    vo = src[rout, c]
                    vi = src[rin, c]
                    if vo != vo:
                        nans[c] -= 1
                        vo = inf
                    if vi != vi:
                        nans[c] += 1
                        vi = inf
                    if vo == vi:
                        continue
                    t = 0  # remove one vo, then insert vi, in one pass
                    while cols[c, t] != vo:
                        t += 1
                    if vi > vo:
                        while t + 1 < nl and cols[c, t + 1] < vi:
                            cols[c, t] = cols[c, t + 1]
                            t += 1
                    else:
                        while t > 0 and cols[c, t - 1] > vi:
                            cols[c, t] = cols[c, t - 1]
                            t -= 1
                    cols[c, t] = vi
        # the row: the window at column 0, then slide
        wnan = 0
        for j in range(nc):
            cc = _reflect(j - hc, ncols)
            slot_col[(j - hc) % nc] = cc
            wnan += nans[cc]
        for q in range(nq):
            for s in range(nc):
                p[q, s] = 0
        total0 = 0
        for c in range(ncols):
            s_new = -1
            if c > 0:
                s_new = (c - 1 - hc) % nc
                cc = _reflect(c - hc + nc - 1, ncols)
                wnan += nans[cc] - nans[slot_col[s_new]]
                slot_col[s_new] = cc
            for q in range(nq):
                k = ks[q]
                if s_new < 0:
                    total = total0
                else:  # the new column: its values below the previous element
                    bound = prev[q]
                    lo, hi = 0, nl
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if cols[slot_col[s_new], mid] < bound:
                            lo = mid + 1
                        else:
                            hi = mid
                    total = k - p[q, s_new] + lo
                    p[q, s_new] = lo
                while total < k:  # count the smallest value not counted
                    best, bs = inf, -1
                    for s in range(nc):
                        if p[q, s] < nl:
                            v = cols[slot_col[s], p[q, s]]
                            if bs < 0 or v < best:
                                best, bs = v, s
                    p[q, bs] += 1
                    total += 1
                while total > k:  # give back the largest value counted
                    best, bs = -inf, -1
                    for s in range(nc):
                        if p[q, s] > 0:
                            v = cols[slot_col[s], p[q, s] - 1]
                            if bs < 0 or v > best:
                                best, bs = v, s
                    p[q, bs] -= 1
                    total -= 1
                best = inf
                for s in range(nc):
                    if p[q, s] < nl:
                        v = cols[slot_col[s], p[q, s]]
                        if v < best:
                            best = v
                prev[q] = best
            o = r - out_r0
            for q in range(nq):
                if wnan > 0:  # SciPy's own selection, NaNs and all
                    outs[q, o, c] = _window_rank(src, src_r0, nrows, ncols, r, c, nl, nc,
                                                 ks[q], buf)  # fmt: skip
                else:
                    outs[q, o, c] = prev[q]


@nb.njit(cache=True, nogil=True)
def _medsub_rows(data, d_r0, nrows, r_a, r_b, nl, nc, ks, out, out_r0):
    """``out[r - out_r0] = data[r] - median`` for the rows ``[r_a, r_b)``."""
    outs = out.reshape(1, out.shape[0], out.shape[1])
    _rank_rows(data, d_r0, nrows, r_a, r_b, nl, nc, ks, outs, out_r0)
    for r in range(r_a, r_b):
        o = r - out_r0
        dr = r - d_r0
        for c in range(data.shape[1]):
            out[o, c] = data[dr, c] - out[o, c]


@nb.njit(cache=True, nogil=True)
def _bin(v, inv_w, half, nbins):
    """The histogram bin of ``v`` (not NaN): ``floor(v / w)`` from the middle, the end
    bins taking everything beyond (unbounded)."""
    t = v * inv_w
    if t < 1.0 - half:
        return 0
    if t >= half - 1.0:
        return nbins - 1
    return int(np.floor(t)) + half


@nb.njit(cache=True, nogil=True)
def _walk(hist, b, below, k, nbins):
    """The bin holding the element of rank ``k`` and the count of values in the bins
    below it, from bin ``b`` with ``below`` values under it (walking a few bins)."""
    while b > 0 and below > k:
        b -= 1
        below -= hist[b]
    while b < nbins - 1 and below + hist[b] <= k:
        below += hist[b]
        b += 1
    return b, below


@nb.njit(cache=True, nogil=True)
def _mask_rows(data, d_r0, medsub, m_r0, nrows, r_a, r_b, nl, nc, ks, factors, limits, inv_w,
               nbins, mask, mask_r0):  # fmt: skip
    """The sigma mask of the rows ``[r_a, r_b)``: not finite, or ``medsub`` below
    ``-lsigma * sigma`` or above ``hsigma * sigma``, with ``sigma = (high - low) / 2``,
    ``high`` and ``low`` the elements of rank ``ks[0]`` and ``ks[1]`` (SciPy's 69.1 and 30.9
    percentiles) of ``medsub`` over ``nl`` x ``nc``. ``factors`` holds ``-lsigma``,
    ``hsigma`` and 0.5 in the data's float type (NumPy's arithmetic), ``limits`` the same
    two as float64.

    Most pixels are decided without the percentiles themselves: a histogram of the
    window's values in ``nbins`` bins of width ``1 / inv_w`` (kept per column and summed
    over the window's columns as it slides) tells the bins the two elements lie in, so
    bounds of sigma; a pixel well inside (or well outside) the thresholds for every sigma
    within the bounds is decided (with a margin far above any rounding). The others, and
    every window holding a NaN, get the exact percentiles by SciPy's own selection."""
    ncols = medsub.shape[1]
    hl, hc = nl // 2, nc // 2
    k_hi, k_lo = ks[0], ks[1]
    half = nbins // 2
    fast = inv_w > 0.0 and np.isfinite(inv_w)
    w = 1.0 / inv_w if fast else 0.0
    colh = np.zeros((ncols, nbins), np.int32)  # each column's window values, by bin
    ring = np.empty((ncols, nl), np.uint8)  # and their bins, by row (NONE: a NaN)
    nans = np.zeros(ncols, np.int64)  # NaNs in each column's window
    hist = np.zeros(nbins, np.int32)  # the window's
    slot_col = np.empty(nc, np.int64)
    buf = np.empty(nl * nc, np.float64)
    neg_l, pos_h, halfd = factors[0], factors[1], factors[2]
    lim_l, lim_h = limits[0], limits[1]  # -lsigma, hsigma
    inner, outer = 1.0 - 1e-5, 1.0 + 1e-5
    none = np.uint8(255)
    for r in range(r_a, r_b):
        if r == r_a:
            for c in range(ncols):
                nans[c] = 0
                for b in range(nbins):
                    colh[c, b] = 0
                for i in range(nl):
                    v = medsub[_reflect(r - hl + i, nrows) - m_r0, c]
                    if v != v:
                        nans[c] += 1
                        ring[c, (r - hl + i) % nl] = none
                    else:
                        b = _bin(v, inv_w, half, nbins)
                        colh[c, b] += 1
                        ring[c, (r - hl + i) % nl] = b
        else:
            rout = _reflect(r - 1 - hl, nrows) - m_r0
            rin = _reflect(r - hl + nl - 1, nrows) - m_r0
            slot = (r - 1 - hl) % nl
            if rout != rin:
                for c in range(ncols):
                    bo = ring[c, slot]
                    if bo == none:
                        nans[c] -= 1
                    else:
                        colh[c, bo] -= 1
                    vi = medsub[rin, c]
                    if vi != vi:
                        nans[c] += 1
                        ring[c, slot] = none
                    else:
                        bi = _bin(vi, inv_w, half, nbins)
                        colh[c, bi] += 1
                        ring[c, slot] = bi
        for b in range(nbins):
            hist[b] = 0
        wnan = 0
        for j in range(nc):
            cc = _reflect(j - hc, ncols)
            slot_col[(j - hc) % nc] = cc
            wnan += nans[cc]
            for b in range(nbins):
                hist[b] += colh[cc, b]
        # the bins of the two elements, and how many values lie below each (Huang's way:
        # counted once per row, then moved by the columns that come and go)
        b_lo, below_lo = _walk(hist, 0, 0, k_lo, nbins)
        b_hi, below_hi = _walk(hist, 0, 0, k_hi, nbins)
        for c in range(ncols):
            if c > 0:
                s = (c - 1 - hc) % nc
                old = slot_col[s]
                cc = _reflect(c - hc + nc - 1, ncols)
                if cc != old:
                    wnan += nans[cc] - nans[old]
                    n_lo, n_hi = 0, 0  # the change of the counts below the two bins
                    for b in range(nbins):
                        d = colh[cc, b] - colh[old, b]
                        hist[b] += d
                        n_lo += d if b < b_lo else 0
                        n_hi += d if b < b_hi else 0
                    b_lo, below_lo = _walk(hist, b_lo, below_lo + n_lo, k_lo, nbins)
                    b_hi, below_hi = _walk(hist, b_hi, below_hi + n_hi, k_hi, nbins)
                    slot_col[s] = cc
            x = data[r - d_r0, c]
            m = medsub[r - m_r0, c]
            out = r - mask_r0
            if not np.isfinite(x):
                mask[out, c] = 1
                continue
            state = -1  # -1: undecided, 0: good, 1: bad
            if fast and wnan == 0 and b_lo > 0 and b_hi < nbins - 1:  # bounded bins
                s_lb = ((b_hi - half - 0.001) - (b_lo - half + 1.001)) * w * 0.5
                s_ub = ((b_hi - half + 1.001) - (b_lo - half - 0.001)) * w * 0.5
                mf = np.float64(m)
                if s_lb > 0.0 and lim_l * s_lb * inner <= mf <= lim_h * s_lb * inner:
                    state = 0
                elif mf < lim_l * s_ub * outer or mf > lim_h * s_ub * outer:
                    state = 1
            if state < 0:  # the exact percentiles, SciPy's way
                high = _window_rank(medsub, m_r0, nrows, ncols, r, c, nl, nc, k_hi, buf)
                low = _window_rank(medsub, m_r0, nrows, ncols, r, c, nl, nc, k_lo, buf)
                sigma = (medsub.dtype.type(high) - medsub.dtype.type(low)) * halfd
                state = 1 if m < neg_l * sigma or m > pos_h * sigma else 0
            mask[out, c] = state


@nb.njit(cache=True, nogil=True)
def _medsub_net_rows(data, d_r0, nrows, r_a, r_b, nl, nc, k, run, colnet, winnet, out, out_r0):
    """``out[r - out_r0] = data[r] - median`` for the rows ``[r_a, r_b)`` by comparator
    networks, lane-parallel over the columns: each column's ``nl`` values sorted by
    ``colnet`` (padded with +inf to ``run`` rows), then, per tile of output columns, the
    window's ``nc`` sorted columns merged by ``winnet`` (Batcher's merge of the sorted runs,
    only the comparators that reach position ``k``), the element of rank ``k`` read off.
    Windows holding a NaN take SciPy's own selection."""
    ncols = data.shape[1]
    hl, hc = nl // 2, nc // 2
    width = ncols + nc - 1  # the window columns of the row, reflected at the edges
    cmap = np.empty(width, np.int64)
    for v in range(width):
        cmap[v] = _reflect(v - hc, ncols)
    inf = data.dtype.type(np.inf)
    cs = np.empty((run, width), data.dtype)  # sorted columns, reflected columns included
    nans = np.zeros(width, np.int64)
    tile = 64
    lanes = np.empty((nc * run, tile), data.dtype)
    buf = np.empty(nl * nc, np.float64)
    for r in range(r_a, r_b):
        for v in range(width):
            nans[v] = 0
        for i in range(nl):
            rr = _reflect(r - hl + i, nrows) - d_r0
            for v in range(width):
                x = data[rr, cmap[v]]
                cs[i, v] = x
                if x != x:
                    nans[v] += 1
        for i in range(nl, run):
            for v in range(width):
                cs[i, v] = inf
        for e in range(colnet.shape[1]):
            ia, ib = colnet[0, e], colnet[1, e]
            for v in range(width):
                x, y = cs[ia, v], cs[ib, v]
                cs[ia, v] = x if x < y else y
                cs[ib, v] = y if x < y else x
        o = r - out_r0
        dr = r - d_r0
        for c0 in range(0, ncols, tile):
            t_n = min(tile, ncols - c0)
            for j in range(nc):
                for i in range(run):
                    lanes[j * run + i, :t_n] = cs[i, c0 + j : c0 + j + t_n]
            for e in range(winnet.shape[1]):
                ia, ib = winnet[0, e], winnet[1, e]
                for t in range(t_n):
                    x, y = lanes[ia, t], lanes[ib, t]
                    lanes[ia, t] = x if x < y else y
                    lanes[ib, t] = y if x < y else x
            for t in range(t_n):
                c = c0 + t
                wn = 0
                for j in range(nc):
                    wn += nans[c + j]
                if wn > 0:
                    med = data.dtype.type(_window_rank(data, d_r0, nrows, ncols, r, c, nl, nc,
                                                       k, buf))  # fmt: skip
                else:
                    med = lanes[k, t]
                out[o, c] = data[dr, c] - med


@nb.njit(cache=True, nogil=True)
def _medsub_pairs_rows(data, d_r0, nrows, r_a, r_b, out, out_r0):
    """``out[r - out_r0] = data[r] - median`` (7 x 7) for the rows ``[r_a, r_b)`` by the
    straight-line code of ``_numba_ccdmask_net`` (see ``_median_net``): each row's columns
    sorted, in two planes (even and odd columns of the row extended by 3 reflected columns
    each side), then the medians of the windows two by two. Windows holding a NaN take
    SciPy's own selection."""
    nl = nc = 7
    h = 3
    ncols = data.shape[1]
    pairs = (ncols + 1) // 2
    width = pairs + h  # pair columns w: extended columns 2 w and 2 w + 1 (data 2 w - 3 ..)
    w_a, w_b = 2, min(width, (ncols + 1) // 2 + 1)  # both columns inside the data
    planes = np.empty((2, nl, width), data.dtype)
    medians = np.empty((2, pairs), data.dtype)
    rows = np.empty(nl, np.int64)
    nans = np.empty(2 * width, np.int64)
    buf = np.empty(nl * nc, np.float64)
    for r in range(r_a, r_b):
        for i in range(nl):
            rows[i] = _reflect(r - h + i, nrows) - d_r0
        if w_b > w_a:
            sort_columns_7x7(data, rows, w_a, w_b, planes)
        for w in range(width):  # the columns reflected at the edges
            if w_a <= w < w_b:
                continue
            for u in range(2):
                c = _reflect(2 * w + u - h, ncols)
                for i in range(nl):  # insertion sort
                    x = data[rows[i], c]
                    t = i
                    while t > 0 and planes[u, t - 1, w] > x:
                        planes[u, t, w] = planes[u, t - 1, w]
                        t -= 1
                    planes[u, t, w] = x
        median_pairs_7x7(planes, medians, pairs)
        o, dr = r - out_r0, r - d_r0
        for t in range(ncols // 2):
            out[o, 2 * t] = data[dr, 2 * t] - medians[0, t]
            out[o, 2 * t + 1] = data[dr, 2 * t + 1] - medians[1, t]
        if ncols % 2:
            out[o, ncols - 1] = data[dr, ncols - 1] - medians[0, pairs - 1]
        found = 0  # a NaN in the row's windows (the networks move values, never lose one)
        for w in range(width):
            for i in range(nl):
                found += (planes[0, i, w] != planes[0, i, w]) + (planes[1, i, w] != planes[1, i, w])
        if found == 0:
            continue
        for v in range(2 * width):
            nans[v] = 0
            for i in range(nl):
                x = planes[v % 2, i, v // 2]
                nans[v] += x != x
        for c in range(ncols):
            wn = 0
            for j in range(nc):
                wn += nans[c + j]
            if wn > 0:
                med = _window_rank(data, d_r0, nrows, ncols, r, c, nl, nc, (nl * nc) // 2, buf)
                out[o, c] = data[dr, c] - data.dtype.type(med)


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
