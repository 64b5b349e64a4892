"""Band planning: how many rows of every frame to hold at once, from explicit byte counts.

Working memory of pass 2 for a band of ``rows`` rows of ``n`` frames of ``cols`` columns:

- two stack buffers (one being combined, the next being read): ``2 * n * rows * cols * itemsize``
- two mask buffers when any frame has a mask: ``2 * n * rows * cols`` bytes
- the raw bytes of one frame's band while it is converted: ``rows * cols * 8`` at most
  (an upper bound: ``FitsFrame.read_rows`` converts 256 kB at a time)
- per-band outputs (float64 image and uncertainty, int32 count): ``rows * cols * 20``;
  only a custom band combiner (the ccdproc drop-in's) makes them, a backend's kernel
  writes into the results

Pass 1 (frame levels) holds two whole frames (one being measured while the next is read),
the raw bytes of one frame while it is converted and the median's copy of a mask:
``frame_pixels * (2 * itemsize + 8 + 1)``. Both passes stay under ``mem_limit``.
The combined outputs (image, uncertainty, count, mask: one frame each) are not part of the
limit: they are the size of one frame, whatever the number of frames.

Calibration of raw frames (:mod:`gpuflat._calibrate`) adds its own buffers, counted by the
caller and passed in: ``extra_per_row`` bytes for each row of a band (its float64 work rows
of the raw frame, the raw bytes being converted, the master bias and dark rows cached for
the band...), held in pass 1 too (a whole frame is calibrated one band-sized chunk at a
time), and ``extra_fixed`` bytes held whatever the band (an overscan strip read whole).

The grow (:mod:`gpuflat._grow`) reads every band with ``halo`` rows above and below, held
in the same buffers, and adds ``pass2_per_row`` bytes per row of them (its statuses, masks
and outputs): a band of ``rows`` rows costs ``(rows + 2 * halo) * bytes_per_row``.
"""

from __future__ import annotations

from dataclasses import dataclass

BAND_TARGET = 64 * 2**20  # bytes of pass-2 working memory to aim for when the limit allows more


@dataclass(frozen=True)
class BandPlan:
    rows: int  # rows per band
    nbands: int
    bytes_per_row: int  # pass-2 working bytes per band row
    pass1_bytes: int

    @property
    def single(self) -> bool:
        return self.nbands == 1


def plan_bands(
    n,
    shape,
    *,
    itemsize,
    masked,
    mem_limit,
    extra_per_row=0,
    extra_fixed=0,
    halo=0,
    pass2_per_row=0,
) -> BandPlan:
    """Largest band height whose working memory fits ``mem_limit`` (bytes). ``halo``: rows
    read above and below every band besides its own (the grow's), held with it;
    ``pass2_per_row``: bytes per row of a band (and its halo rows) that pass 2 alone holds
    (the grow's buffers)."""
    nrows, cols = shape
    per_sample = itemsize + (1 if masked else 0)
    bytes_per_row = cols * (2 * n * per_sample + 8 + 20) + extra_per_row + pass2_per_row
    pass1 = nrows * cols * (2 * itemsize + 8 + 1) + extra_fixed
    least = min(nrows, 1 + 2 * halo) * bytes_per_row  # a band of one row and its halo
    if pass1 + extra_per_row > mem_limit or least + extra_fixed > mem_limit:
        need = max(pass1 + extra_per_row, least + extra_fixed)
        raise ValueError(
            f"mem_limit={mem_limit:.4g} bytes is too small for {n} frames of {nrows}x{cols}: "
            f"at least {need:.4g} bytes are needed"
        )
    # One band holding everything needs no second buffer and no pass-1 re-read.
    whole = nrows * (cols * (n * per_sample + 8 + 20) + extra_per_row + pass2_per_row)
    if whole + extra_fixed <= mem_limit:
        return BandPlan(nrows, 1, bytes_per_row, pass1)
    # Bands no larger than needed: the two buffers are reused band after band, so a modest
    # size costs nothing in speed and keeps fresh memory (page faults) and cache misses low.
    rows = min(nrows, int((mem_limit - extra_fixed) // bytes_per_row) - 2 * halo)
    rows = max(1, min(rows, BAND_TARGET // bytes_per_row - 2 * halo))
    if extra_per_row:  # pass 1 holds two whole frames and one chunk of calibration rows
        rows = min(rows, int((mem_limit - pass1) // extra_per_row))
    return BandPlan(rows, -(-nrows // rows), bytes_per_row, pass1)
