"""The Python side of ccdmask's kernels (:mod:`gpuflat.backends._numba_ccdmask`): which
moving median a window takes (7 x 7: the generated straight-line code; else comparator
networks from :func:`_networks.batcher`, handed to the kernel as arrays, or the tracker),
the sigma mask's bin width and count lanes, SciPy's percentile ranks, and a band's rows
split over numba's thread count (:mod:`_threads`). Nothing here is compiled."""

from __future__ import annotations

import functools

import numpy as np

from . import _threads
from ._median_net import SIZES
from ._numba_ccdmask import _mask_rows, _medsub_net_rows, _medsub_pairs_rows, _medsub_rows
from ._numba_lanes import LANES


@functools.cache
def median_networks(nl: int, nc: int):
    """``(run, column network, window network)`` for the median of ``nl`` x ``nc``, or
    None where the tracker of :func:`_rank_rows` is cheaper (large windows)."""
    from ._networks import batcher

    run = 1
    while run < nl:
        run *= 2
    k = (nl * nc) // 2
    need, keep = {k}, []
    for i, j in reversed(batcher(nc * run, run)):  # only what reaches position k
        if i in need or j in need:
            keep.append((i, j))
            need.update((i, j))
    if len(keep) > 400 or nc * run > 128:
        return None
    col = np.array(batcher(nl), np.int64).reshape(-1, 2).T.copy()
    win = np.array(keep[::-1], np.int64).reshape(-1, 2).T.copy()
    return run, col, win


def medsub_band(data, d_r0, nrows, r_a, r_b, nlmed, ncmed, out, out_r0) -> None:
    """``data - median_filter(data, (nlmed, ncmed))`` for the image rows ``[r_a, r_b)``
    into ``out`` (whose row 0 is image row ``out_r0``), on numba's thread count."""
    k = (nlmed * ncmed) // 2
    ks = np.array([k], np.int64)
    pairs = (nlmed, ncmed) in SIZES
    nets = None if pairs else median_networks(nlmed, ncmed)
    bounds = _split(r_a, r_b)

    def part(t):
        a, b = bounds[t], bounds[t + 1]
        if b <= a:
            return
        if pairs:
            _medsub_pairs_rows(data, d_r0, nrows, a, b, out, out_r0)
        elif nets is None:
            _medsub_rows(data, d_r0, nrows, a, b, nlmed, ncmed, ks, out, out_r0)
        else:
            _medsub_net_rows(data, d_r0, nrows, a, b, nlmed, ncmed, k, *nets, out, out_r0)

    _threads.run_parts(part, len(bounds) - 1)


def mask_band(data, d_r0, medsub, m_r0, nrows, r_a, r_b, nlsig, ncsig, lsigma, hsigma,
              mask, mask_r0) -> None:  # fmt: skip
    """The sigma mask of the image rows ``[r_a, r_b)`` into ``mask`` (uint8, row 0 =
    image row ``mask_r0``), ``medsub`` holding the rows the windows reach."""
    n = nlsig * ncsig
    ks = np.array([percentile_rank(n, 69.1), percentile_rank(n, 30.9)], np.int64)
    factors = np.array([-lsigma, hsigma, 0.5], medsub.dtype)
    limits = np.array([-lsigma, hsigma], np.float64)
    inv_w = _inverse_bin_width(medsub[max(0, r_a - m_r0) : r_b - m_r0])
    bounds = _split(r_a, r_b)

    counts = np.int16 if n < INT16_COUNTS else np.int32  # of the window's values, by edge

    def part(t):
        a, b = bounds[t], bounds[t + 1]
        if b > a:
            below = np.zeros((medsub.shape[1] + 1, LANES), counts)
            _mask_rows(data, d_r0, medsub, m_r0, nrows, a, b, nlsig, ncsig, ks, factors,
                       limits, inv_w, NBINS, below, mask, mask_r0)  # fmt: skip

    _threads.run_parts(part, len(bounds) - 1)


#: Windows of fewer values count them in int16 lanes (twice the lanes per instruction)
INT16_COUNTS = 2**15
#: Bins of the sigma window's values (their width: a quarter of the band's typical sigma);
#: their inner edges are the vector lanes of ``_numba_lanes`` (at most ``LANES``)
NBINS = 32
_SAMPLE = 1 << 14


def _inverse_bin_width(medsub) -> float:
    """1 / the bin width: ccdmask's sigma over a sample of the band's values, / 8 (so the
    two percentiles of a window of typical noise fall some 8 bins either side of 0, and
    sigma is bounded within an eighth or so). 0 when the values do not tell (all the
    pixels are then computed exactly)."""
    flat = medsub.reshape(-1)
    sample = flat[:: max(1, flat.size // _SAMPLE)]
    sample = sample[np.isfinite(sample)]
    if sample.size < 16:
        return 0.0
    low, high = np.percentile(sample, [30.9, 69.1])
    sigma = (float(high) - float(low)) / 2.0
    return NBINS / 8.0 / sigma if sigma > 0 and np.isfinite(sigma) else 0.0


def percentile_rank(n: int, percentile: float) -> int:
    """SciPy's rank for ``percentile_filter`` over ``n`` values."""
    return n - 1 if percentile == 100.0 else int(float(n) * percentile / 100.0)


def _split(a, b) -> list[int]:
    parts = max(1, min(_threads.parts(), (b - a) // 8 or 1))
    return [a + (b - a) * t // parts for t in range(parts + 1)]
