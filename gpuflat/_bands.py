"""Pass 2 of a combination: row bands of every frame through the backend's kernel (or a
custom band combiner), the next band read while this one is combined, each band's rows
written into the results object. On the plain path (:func:`combine_bands`) and on a
backend's host path (:func:`combine_fed`)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from . import _grow
from ._stream import band_mask, stage


def combine_bands(ctx, reader, backend, planes, *, buffers, stack, pass1, scales, weights,
                  params, rejected, band_combiner, workspace, grow=0.0) -> None:  # fmt: skip
    """Pass 2 on the plain path: every band read (unless ``stack`` holds the whole stack,
    read by pass 1) into one of ``buffers`` in turn by ``reader`` while the other is
    combined into ``planes`` (:class:`gpuflat._memory.Planes` or a streamed product).
    With ``grow`` (pixels, :mod:`gpuflat._grow`) each band is read with ``_grow.halo(grow)``
    rows above and below (the buffers hold them). ``planes`` is discarded when this
    fails."""
    frames, bands, timings, timed = ctx.frames, ctx.bands, ctx.timings, ctx.timed
    n = len(frames)
    nrows, cols = frames[0].shape
    clock = time.perf_counter
    halo = _grow.halo(grow)

    def span(k):  # the rows read for band k: the band and its halo rows
        r0, r1 = bands[k]
        return max(0, r0 - halo), min(nrows, r1 + halo)

    if band_combiner is None and grow > 0:

        def combine_rows(d, m, k, busy):
            r0, r1 = bands[k]
            _grow.combine_rows(backend, d, m, span(k), bands[k], cols, scales, weights,
                               params, grow, planes.rows(r0, r1), rejected, busy)  # fmt: skip
            planes.done(r0, r1)
    elif band_combiner is None:
        # the backend writes the band's rows of the results where they lie (the float64
        # values rounded to out_dtype as they are stored, as an assignment would)

        def combine_rows(d, m, k, busy):
            r0, r1 = bands[k]
            out = planes.rows(r0, r1)
            backend.combine_band(d, m, scales, weights, params, out=out, rejected=rejected,
                                 busy_cores=busy)  # fmt: skip
            planes.done(r0, r1)
    else:

        def combine_rows(d, m, k, busy):
            r0, r1 = bands[k]
            for a, b in zip(planes.rows(r0, r1), band_combiner(d, m, scales, weights),
                            strict=True):  # fmt: skip
                a[...] = b.reshape(-1)
            planes.done(r0, r1)

    def band_view(k):
        a, b = span(k)
        return buffers[k % len(buffers)][: n * (b - a) * cols].reshape(n, b - a, cols)

    def read(k):
        a, b = span(k)
        t = clock()
        if stack is None or not pass1:
            buf = band_view(k)
            for i, f in enumerate(frames):
                f.read_rows(a, b, buf[i])
        mask = band_mask(frames, ctx.bad_pixel_mask, a, b) if ctx.masked else None
        timings["read"] += clock() - t
        return mask

    try:
        pending = reader.submit(read, 0)
        for k in range(len(bands)):
            mask = timed("wait", pending.result)
            reading = k + 1 < len(bands)  # the reader reads the next band meanwhile
            if reading:
                pending = reader.submit(read, k + 1)
            data = band_view(k).reshape(n, -1)
            busy = reading + (0 if workspace is None else workspace.busy_cores())
            timed("combine", combine_rows, data, mask, k, busy)
            if ctx.progress is not None:
                ctx.progress(k + 1, len(bands))
    except BaseException:
        planes.discard()
        raise


def combine_fed(ctx, feed, formats, scales, weights, params, outputs, rejected, *, reread):
    """Pass 2 on the host path: each band read into one slot's staging (unless the stack
    is resident on the device) while the other slot's band is converted and combined."""
    frames, bands, timings = ctx.frames, ctx.bands, ctx.timings
    n = len(frames)

    def read_band(k):
        t = time.perf_counter()
        r0, r1 = bands[k]
        for i in range(n):
            stage(ctx, feed, formats, k % 2, i, r0, r1, i)
        timings["read"] += time.perf_counter() - t

    with ThreadPoolExecutor(1, thread_name_prefix="gpuflat-reader") as reader:
        pending = None
        try:
            if reread:
                ctx.timed("combine", feed.acquire, 0)
                pending = reader.submit(read_band, 0)
            for k, (r0, r1) in enumerate(bands):
                slot = k % 2
                if reread:
                    ctx.timed("wait", pending.result)
                    pending = None
                    if k + 1 < len(bands):
                        ctx.timed("combine", feed.acquire, (k + 1) % 2)
                        pending = reader.submit(read_band, k + 1)
                    ctx.timed("combine", feed.load, slot, r0, r1)
                else:
                    ctx.timed("combine", feed.acquire, slot)
                dests = tuple(o[r0:r1] for o in outputs)
                ctx.timed("combine", feed.combine, slot, r0, r1, scales, weights, params,
                          dests, rejected)  # fmt: skip
                if ctx.progress is not None:
                    ctx.progress(k + 1, len(bands))
        finally:
            if pending is not None:
                pending.cancel() or pending.exception()
        ctx.timed("combine", feed.finish)
