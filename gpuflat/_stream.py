"""What the pipeline's passes share (:mod:`gpuflat._levels`, :mod:`gpuflat._bands`): the
context of one combination, the rows of a frame's mask, and the staging of a frame's rows
into a backend's feed (its host path)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Context:
    """One combination's frames and bookkeeping, as the passes see them."""

    frames: list
    bad_pixel_mask: np.ndarray | None
    masked: bool
    bands: list
    timings: dict
    timed: object
    progress: object


def stage(ctx, feed, formats, k, i, r0, r1, seg) -> None:
    """Read frame ``i``'s rows [r0, r1) (stored bytes when it has a raw format, else its
    float32 values) and its mask rows straight into the feed's pinned staging of slot ``k``."""
    frame = ctx.frames[i]
    buf = feed.stage(k, i, r1 - r0, seg)
    if formats[i] is None:
        frame.read_rows(r0, r1, buf)
    else:
        frame.read_raw_rows(r0, r1, buf)
    if ctx.masked:
        m = frame_mask(frame, ctx.bad_pixel_mask, r0, r1)
        dst = feed.mask_stage(k, r1 - r0, seg)
        if m is None:
            dst[...] = 0
        else:
            dst[...] = np.asarray(m, bool).reshape(-1)


def frame_mask(frame, bad_pixel_mask, r0, r1):
    """Frame rows [r0, r1)'s mask (its own, or'ed with the bad-pixel mask), None if none."""
    m = frame.read_mask_rows(r0, r1)
    if bad_pixel_mask is not None:
        m = bad_pixel_mask[r0:r1] if m is None else (m | bad_pixel_mask[r0:r1])
    return m


def band_mask(frames, bad_pixel_mask, r0, r1):
    """Every frame's mask of rows [r0, r1), as the kernels take it: uint8 [n, pixels]."""
    out = np.zeros((len(frames), (r1 - r0) * frames[0].shape[1]), np.uint8)
    for i, f in enumerate(frames):
        m = frame_mask(f, bad_pixel_mask, r0, r1)
        if m is not None:
            out[i] = m.ravel()
    return out
