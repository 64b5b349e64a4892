"""Pass 1 of a combination: every frame's level (median, mean, or a callable's value) on
the whole frame, the next frame read while this one is measured; and the scale factors
from the levels. On the plain path (:func:`measure`) and on a backend's host path
(:func:`measure_fed`)."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._config import CombineConfig
from ._stream import frame_mask, stage
from .errors import BadLevelError, GpuflatError


def measure(ctx, reader, backend, config, levels, *, memory, stack, frame_bytes, raw, dtype,
            plan, workspace) -> list:  # fmt: skip
    """Pass 1 on the plain path: append every frame's levels to ``levels`` (how -> list);
    returns the ``scale`` callable's values (empty without one).

    With one band (``stack``: the whole stack) each frame is read into its place in the
    stack, so that it is read once; banded, two whole frames (their stored bytes when
    ``raw`` gives the formats the backend measures) in turn, in ``memory``'s first
    ``2 * frame_bytes`` bytes; ``reader``: the reader thread."""
    frames, timed = ctx.frames, ctx.timed
    n = len(frames)
    nrows, cols = frames[0].shape
    shape = (nrows, cols)
    user_scales = []
    spare = None
    if not plan.single:
        spare = [memory[k * frame_bytes : (k + 1) * frame_bytes] for k in range(2)]
        if raw is None:
            spare = [s.view(dtype).reshape(shape) for s in spare]

    def read_frame(i):
        if raw is not None:
            buf = spare[i % 2][: nrows * cols * raw[i].dtype.itemsize]
            timed("read", frames[i].read_raw_rows, 0, nrows, buf)
            return buf
        buf = stack[i] if plan.single else spare[i % 2]
        timed("read", frames[i].read_rows, 0, nrows, buf)
        return buf

    def level(i, buf, fmask, how):
        # beside the reader alone a level is fastest on every core; beside the reader
        # and the run's writer, a region on both cores stalls (7-10 ms a 2048^2
        # median instead of 4.6 on one core)
        busy = 0 if workspace is None else workspace.busy_cores()
        if raw is not None:
            return backend.raw_level(buf, raw[i], fmask, how, busy_cores=busy)
        return backend.frame_level(buf, fmask, how, busy_cores=busy)

    pending = reader.submit(read_frame, 0)
    for i, f in enumerate(frames):
        buf = timed("wait", pending.result)
        if i + 1 < n:
            pending = reader.submit(read_frame, i + 1)
        fmask = frame_mask(f, ctx.bad_pixel_mask, 0, nrows)
        for how in levels:
            levels[how].append(timed("levels", level, i, buf, fmask, how))
        if callable(config.scale):
            user_scales.append(timed("levels", config.scale, buf))
    return user_scales


def measure_fed(ctx, feed, formats, levels, pass1):
    """Pass 1 on the backend's host path: each whole frame read into one slot's pinned
    staging while the other slot's frame is converted and measured on the device."""
    if not pass1:
        return levels
    frames, timings = ctx.frames, ctx.timings
    n, nrows = len(frames), frames[0].shape[0]

    def read_frame(i):
        t = time.perf_counter()
        stage(ctx, feed, formats, i % 2, i, 0, nrows, 0)
        timings["read"] += time.perf_counter() - t

    with ThreadPoolExecutor(1, thread_name_prefix="gpuflat-reader") as reader:
        pending = None
        try:
            ctx.timed("levels", feed.acquire, 0)
            pending = reader.submit(read_frame, 0)
            for i in range(n):
                ctx.timed("wait", pending.result)
                pending = None
                if i + 1 < n:
                    ctx.timed("levels", feed.acquire, (i + 1) % 2)
                    pending = reader.submit(read_frame, i + 1)
                ctx.timed("levels", feed.measure, i % 2, i)
        finally:
            if pending is not None:  # never leave the reader writing into staging
                pending.cancel() or pending.exception()
        got = ctx.timed("levels", feed.levels)
    return {how: got[how] for how in levels}


def raw_formats(backend, frames, plan, config, calibrator, dtype):
    """The frames' stored formats when pass 1 measures the stored values as they are: a
    banded plan (whose pass 1 converts frames only to measure them), float32 work, no
    calibration and no ``scale`` callable, and a backend that measures every frame's
    format (``measures_raw``); else None."""
    measures = getattr(backend, "measures_raw", None)
    if (
        measures is None
        or plan.single
        or calibrator is not None
        or callable(config.scale)
        or np.dtype(dtype) != np.float32
    ):
        return None
    formats = [getattr(f, "raw_format", None) for f in frames]
    return formats if all(f is not None and measures(f) for f in formats) else None


def scales(config: CombineConfig, frames, levels, user_scales) -> np.ndarray:
    """Every frame's scale factor, from the option and the levels measured."""
    scale = config.scale
    n = len(frames)
    if callable(scale):
        values, what = user_scales, "scale"
    elif isinstance(scale, tuple):
        if len(scale) != n:
            raise ValueError(f"scale has {len(scale)} factors for {n} frames")
        return np.asarray(scale, np.float64)
    elif scale == "none":
        return np.ones(n)
    elif scale.startswith("exptime:"):
        key = scale.partition(":")[2]
        values, what = [], f"{key} (exposure time)"
        for f in frames:
            if key not in f.header:
                raise GpuflatError(f"{f.name}: no {key} keyword in the header, needed to scale")
            values.append(f.header[key])
    else:
        values, what = levels[scale], f"{scale} level"
    out = np.empty(n)
    for i, (f, v) in enumerate(zip(frames, values, strict=True)):
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise BadLevelError(f"{f.name}: {what} {v!r} is not a number") from None
        if not (math.isfinite(v) and v > 0):
            raise BadLevelError(f"{f.name}: {what} is {v!r}; it must be finite and > 0 to scale")
        out[i] = v if callable(scale) else 1.0 / v
    return out
