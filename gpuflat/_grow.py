"""IRAF imcombine's grow (``grow=R``, ``gpuflat run --grow R``): a sample the rejection
took (the clipping, or the nlow/nhigh extrema; not a mask, a non-finite value or the
min/max thresholds) also takes the same frame's samples within ``R`` pixels, a disk
``dx^2 + dy^2 <= R^2``; then every pixel is combined over the survivors of the rejection
less the samples the grow took, without clipping again (docs/kernel-contract.md, "Grow").

One band of rows [r0, r1) is read with ``halo(R)`` rows above and below (fewer at the
image's edges), so that every rejection within ``R`` of the band is seen and the master is
the same whatever the band height:

1. the backend combines the band with its halo rows and writes every sample's status
   (``combine_band(status=)``: not valid, survivor, rejected; step 8 of the contract);
2. each frame's rejected samples are dilated by the disk (``_sources.grow``, the mask
   pass's dilation: numpy only, no scipy needed);
3. the backend combines the band again with the dilated rejections as masks (or'ed with
   the frames' own) and no rejection: the survivors less the grown samples, combined as
   step 6 says;
4. with ``nkeep > 0`` a pixel left with fewer than ``nkeep`` samples keeps the result of
   1 (IRAF: "the value of that pixel without growing"); the rejected counts are those of
   the samples the rejection or the grow took.

Both backends meet step 8 bit for bit, and the rest is here, so a grown master is the same
on either.
"""

from __future__ import annotations

import math

import numpy as np

from ._sources import grow as dilate
from .backends._params import REJECTED, SURVIVOR


def halo(radius: float) -> int:
    """Rows the grow of ``radius`` pixels reaches beyond a band (0 without a grow)."""
    return math.floor(radius) if radius > 0 else 0


def bytes_per_pixel(n: int) -> int:
    """Working bytes per pixel of a band (its halo rows too) that the grow adds: the
    statuses and the masks of the second combination (n bytes each), one frame's dilation
    (3 bytes), and two sets of outputs (float64 image and uncertainty, int32 count)."""
    return 2 * n + 3 + 40


def plain(params):
    """The kernel parameters of the second combination: no rejection (the thresholds stay,
    so that the samples valid there are those valid in the first, less the grown)."""
    return params._replace(nlow=0, nhigh=0, sigma=0, ccdclip=0, nkeep=0, pclip=0.0,
                           rdnoise=(), gain=(), snoise=())  # fmt: skip


def combine_rows(backend, data, mask, span, band, cols, scales, weights, params, radius,
                 out, rejected, busy) -> None:  # fmt: skip
    """Combine rows ``band`` = (r0, r1) with the grow of ``radius`` pixels into ``out``
    (image, uncertainty, count of those rows, 1-D), from ``data`` (float32 [n, pixels])
    and ``mask`` (uint8 or None) of rows ``span`` = (a, b) that hold them and their halo
    rows; the rejected samples of rows [r0, r1) are added to ``rejected`` (int64 [n]) when
    given."""
    n, npix = data.shape
    (a, b), (r0, r1) = span, band
    first = (np.empty(npix), np.empty(npix), np.empty(npix, np.int32))
    status = np.empty((n, npix), np.uint8)
    backend.combine_band(data, mask, scales, weights, params, out=first, status=status,
                         busy_cores=busy)  # fmt: skip
    grown = np.empty((n, npix), np.uint8)
    for i in range(n):
        taken = (status[i] == REJECTED).reshape(b - a, cols)
        grown[i] = dilate(taken, radius).reshape(-1)
    if mask is not None:
        grown |= mask
    inner = slice((r0 - a) * cols, (r1 - a) * cols)
    whole = (a, b) == (r0, r1)
    second = out if whole else (np.empty(npix), np.empty(npix), np.empty(npix, np.int32))
    backend.combine_band(data, grown, scales, weights, plain(params), out=second,
                         busy_cores=busy)  # fmt: skip
    if not whole:
        for dst, src in zip(out, second, strict=True):
            dst[...] = src[inner]
    count = out[2]
    revert = count < params.nkeep if params.nkeep > 0 else None
    if revert is not None and revert.any():
        for dst, src in zip(out, first, strict=True):
            np.copyto(dst, src[inner], where=revert)
    if rejected is not None:
        for i in range(n):
            st = status[i, inner]
            took = (st == SURVIVOR) & (grown[i, inner] != 0)
            if revert is not None:
                took &= ~revert
            rejected[i] += np.count_nonzero(st == REJECTED) + np.count_nonzero(took)
