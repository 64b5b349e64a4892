"""Backend-agnostic orchestration: pass 1 measures frame levels, pass 2 streams row bands
through a backend's ``combine_band`` while the next band is being read."""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits

from ._config import CombineConfig
from ._memory import Planes
from ._plan import BandPlan, plan_bands
from .errors import BadLevelError, GpuflatError, NoFramesError, ShapeMismatchError

if TYPE_CHECKING:
    from astropy.nddata import CCDData

log = logging.getLogger("gpuflat")


@dataclass
class CombineResult:
    """The combined flat and what went into it.

    ``image`` and ``uncertainty`` are NaN where no sample survived; ``count`` is the number
    of survivors per pixel; ``mask`` is True where ``count`` is 0 (all four None when the
    planes went elsewhere: ``combine_frames(results=...)``). ``rejected`` is, per
    frame, the number of its usable samples (finite, unmasked, within min/max) that did not
    survive the extrema window or the clipping (None when a custom combiner ran).
    """

    image: np.ndarray
    uncertainty: np.ndarray
    count: np.ndarray
    mask: np.ndarray
    scales: np.ndarray
    names: list[str]
    levels: dict[str, list[float]]
    header: fits.Header
    unit: str | None
    config: CombineConfig
    backend: str
    plan: BandPlan
    #: seconds spent reading (in the reader thread), on levels, combining, and waiting for
    #: the reader
    timings: dict[str, float] = field(default_factory=dict)
    rejected: np.ndarray | None = None
    #: the calibration applied to the raw frames (:meth:`gpuflat.Calibration.describe`),
    #: None when they were combined as read
    calibration: dict | None = None
    #: (rows, columns) of the planes
    shape: tuple = ()

    @property
    def rejected_fraction(self) -> np.ndarray | None:
        """Per frame, the fraction of its pixels whose sample was rejected."""
        if self.rejected is None:
            return None
        return self.rejected / max(1, math.prod(self.shape))

    def product_header(self) -> fits.Header:
        """The header of this result's product, as ``gpuflat run`` writes it: the first
        frame's header minus structural keys, plus provenance (``COMBINED``, ``NCOMBINE``,
        the input files ``IMCMBnnn``, the scale factors ``SCALEnnn``, every parameter as
        ``HIERARCH GPUFLAT <NAME>``, the backend, gpuflat's version and the date)."""
        from ._products import product_header
        from ._version import __version__

        return product_header(
            self.header, names=self.names, scales=self.scales,
            params={**self.config.describe(), **(self.calibration or {})},
            backend=self.backend, version=__version__,
        )  # fmt: skip

    def write(self, path, *, overwrite: bool = False, compress: bool = False) -> Path:
        """Write the product ``gpuflat run`` writes (primary = the flat, ``MASK``, ``UNCERT``,
        ``NCOMBINE``; :meth:`product_header`), verified and moved into place atomically.

        An existing file is never replaced unless ``overwrite`` (``FileExistsError``);
        ``compress`` tile-compresses the planes but the flat, losslessly. Returns the path.
        """
        if self.image is None:
            raise ValueError("this result's planes were written elsewhere: nothing to write")
        from ._products import write_product

        return write_product(path, self, self.product_header(), unit=self.unit,
                             overwrite=overwrite, compress=compress)  # fmt: skip

    def to_ccddata(self) -> CCDData:
        """The result as a CCDData (StdDevUncertainty, boolean mask), its ``meta`` the
        product's header with the provenance (:meth:`product_header`)."""
        from astropy.nddata import CCDData, StdDevUncertainty

        return CCDData(
            self.image,
            unit=self.unit or "adu",
            uncertainty=StdDevUncertainty(self.uncertainty),
            mask=self.mask,
            meta=self.product_header(),
        )


def combine_frames(
    frames,
    config: CombineConfig,
    backend,
    *,
    dtype=np.float32,
    out_dtype=np.float32,
    clip_scaled=True,
    bad_pixel_mask=None,
    want_levels=(),
    band_combiner=None,
    progress=None,
    calibrator=None,
    workspace=None,
    results=None,
) -> CombineResult:
    """Combine opened frames (``_frames.FitsFrame`` / ``_frames.ArrayFrame``) band by band.

    ``band_combiner(data, mask, scales, weights)`` replaces the backend's kernel (the
    ccdproc compatibility path uses it); ``progress(done, total)`` is called per band;
    ``calibrator`` (a :class:`gpuflat._calibrate.Calibrator`, fresh for this call)
    calibrates every frame as its bands are read, in both passes; ``workspace`` (a
    :class:`Workspace`) lends the stack, else it is allocated for this call;
    ``results(result, shape)``, when given, makes the object that takes the results band by
    band instead of a :class:`Planes` (called once the scales are known, with the
    CombineResult as it will be returned, its planes None), and the result keeps None for
    the planes.
    """
    if not frames:
        raise NoFramesError("no frames to combine")
    extra = (0, 0)
    if calibrator is not None:
        frames = [calibrator.wrap(f) for f in frames]
        extra = calibrator.memory()
    n = len(frames)
    shape = frames[0].shape
    for f in frames[1:]:
        if f.shape != shape:
            raise ShapeMismatchError(
                f"{f.name}: shape {f.shape[0]}x{f.shape[1]} differs from "
                f"{frames[0].name}: {shape[0]}x{shape[1]}"
            )
    _check_units(frames)
    if bad_pixel_mask is not None and bad_pixel_mask.shape != shape:
        raise ShapeMismatchError(
            f"bad-pixel mask shape {bad_pixel_mask.shape} differs from the frames' {shape}"
        )
    if config.weights is not None and len(config.weights) != n:
        raise ValueError(f"weights has {len(config.weights)} values for {n} frames")
    masked = bad_pixel_mask is not None or any(f.mask is not None for f in frames)
    need = set(want_levels)
    if isinstance(config.scale, str) and config.scale in ("median", "mean"):
        need.add(config.scale)
    pass1 = bool(need) or callable(config.scale)
    # The backend's host path (stored bytes to the device, converted and measured there):
    # when it has one, for float32 work and the backend's own kernel and levels.
    fed = (
        getattr(backend, "accepts_raw", False)
        and band_combiner is None
        and not callable(config.scale)
        and np.dtype(dtype) == np.float32
    )
    formats = [getattr(f, "raw_format", None) for f in frames] if fed else []
    itemsize = max([np.dtype(dtype).itemsize] + [np.dtype(f.dtype).itemsize for f in formats if f])
    plan = plan_bands(
        n, shape, itemsize=itemsize, masked=masked, mem_limit=config.mem_limit,
        extra_per_row=extra[0], extra_fixed=extra[1],
    )  # fmt: skip
    if calibrator is not None:
        calibrator.rows = plan.rows  # a frame is calibrated one band-sized chunk at a time
    nrows, cols = shape
    timings = dict.fromkeys(("read", "levels", "combine", "wait"), 0.0)
    clock = time.perf_counter

    def timed(key, fn, *args):
        t = clock()
        try:
            return fn(*args)
        finally:
            timings[key] += clock() - t

    log.debug(
        "plan: %d band(s) of %d rows for %d frames of %dx%d", plan.nbands, plan.rows, n, *shape
    )
    levels = {how: [] for how in sorted(need)}
    weights = None if config.weights is None else np.asarray(config.weights, np.float64)
    noise = config.noise_model([f.header for f in frames], [f.name for f in frames])
    params = config.kernel_params(clip_scaled=clip_scaled, noise=noise)
    bands = [(r, min(nrows, r + plan.rows)) for r in range(0, nrows, plan.rows)]
    ctx = _Context(frames, bad_pixel_mask, masked, bands, timings, timed, progress)
    if fed:
        feed = backend.open_feed(
            formats, shape, rows=plan.rows, masked=masked, pass1=pass1, hows=tuple(levels),
            device_mem_limit=config.device_mem_limit,
        )  # fmt: skip
        if feed.rows != plan.rows:  # thinner bands, for the device budget
            ctx.bands = [(r, min(nrows, r + feed.rows)) for r in range(0, nrows, feed.rows)]
        with feed:
            rejected = np.zeros(n, np.int64)
            levels = _fed(ctx, feed, formats, levels, pass1)
            scales = _scales(config, frames, levels, [])
            result = _result(frames, scales, levels, config, backend, plan, timings, rejected,
                             calibrator)  # fmt: skip
            planes = Planes(shape, out_dtype) if results is None else results(result, shape)
            try:  # the device lands the rows of every band in the whole planes' rows
                outputs = tuple(a.reshape(shape) for a in planes.rows(0, nrows))
                _fed_bands(ctx, feed, formats, scales, weights, params, outputs, rejected,
                           reread=not (feed.resident and pass1))  # fmt: skip
                planes.done(0, nrows)
            except BaseException:
                planes.discard()
                raise
        log.debug("host path: %s stack, %.4g device bytes",
                  "resident" if feed.resident else "streamed", feed.device_bytes)  # fmt: skip
        return _finished(result, planes)

    # Pass 1: frame levels (whole frames), the next frame read while this one is measured.
    # With one band the stack is read once, here.
    # The stack's memory is one allocation (the run's workspace's when there is one): the
    # single band's stack; or, banded, pass 1's two whole frames (their stored bytes when
    # measured raw) and then, in the same memory, pass 2's two 1-D band buffers (every
    # band, the last short one too, a contiguous view). Fresh memory costs page faults.
    raw = _raw_formats(backend, frames, plan, config, calibrator, dtype) if pass1 else None
    item = np.dtype(dtype).itemsize
    band = n * plan.rows * cols * item  # bytes
    frame = nrows * cols * max([f.dtype.itemsize for f in raw] if raw else [item])
    size = band if plan.single else max(2 * band, 2 * frame * pass1)
    memory = np.empty(size, np.uint8) if workspace is None else workspace.stack(size, np.uint8)
    buffers = [memory.view(dtype)] if plan.single else []
    stack = buffers[0].reshape(n, nrows, cols) if plan.single else None
    user_scales = []
    reader = ThreadPoolExecutor(1, thread_name_prefix="gpuflat-reader")
    with reader:
        if pass1:
            spare = None
            if not plan.single:
                spare = [memory[k * frame : (k + 1) * frame] for k in range(2)]
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
                fmask = _frame_mask(f, bad_pixel_mask, 0, nrows)
                for how in levels:
                    levels[how].append(timed("levels", level, i, buf, fmask, how))
                if callable(config.scale):
                    user_scales.append(timed("levels", config.scale, buf))
            del spare, buf
            pending = None  # the future holds the last frame too
        if not plan.single:  # pass 2's two band buffers, where pass 1's frames were
            buffers = [memory[k * band : (k + 1) * band].view(dtype) for k in range(2)]
        scales = _scales(config, frames, levels, user_scales)

        # Pass 2: bands, the next band read while this one is combined.
        rejected = None if band_combiner is not None else np.zeros(n, np.int64)
        result = _result(frames, scales, levels, config, backend, plan, timings, rejected,
                         calibrator)  # fmt: skip
        planes = Planes(shape, out_dtype) if results is None else results(result, shape)
        if band_combiner is None:
            # the backend writes the band's rows of the results where they lie (the float64
            # values rounded to out_dtype as they are stored, as an assignment would)

            def combine_rows(d, m, r0, r1, busy):
                out = planes.rows(r0, r1)
                backend.combine_band(d, m, scales, weights, params, out=out, rejected=rejected,
                                     busy_cores=busy)  # fmt: skip
                planes.done(r0, r1)
        else:

            def combine_rows(d, m, r0, r1, busy):
                for a, b in zip(planes.rows(r0, r1), band_combiner(d, m, scales, weights),
                                strict=True):  # fmt: skip
                    a[...] = b.reshape(-1)
                planes.done(r0, r1)

        def band_view(k):
            r0, r1 = bands[k]
            return buffers[k % len(buffers)][: n * (r1 - r0) * cols].reshape(n, r1 - r0, cols)

        def read(k):
            r0, r1 = bands[k]
            t = clock()
            if stack is None or not pass1:
                buf = band_view(k)
                for i, f in enumerate(frames):
                    f.read_rows(r0, r1, buf[i])
            mask = _band_mask(frames, bad_pixel_mask, r0, r1) if masked else None
            timings["read"] += clock() - t
            return mask

        try:
            pending = reader.submit(read, 0)
            for k, (r0, r1) in enumerate(bands):
                mask = timed("wait", pending.result)
                reading = k + 1 < len(bands)  # the reader reads the next band meanwhile
                if reading:
                    pending = reader.submit(read, k + 1)
                data = band_view(k).reshape(n, (r1 - r0) * cols)
                busy = reading + (0 if workspace is None else workspace.busy_cores())
                timed("combine", combine_rows, data, mask, r0, r1, busy)
                if progress is not None:
                    progress(k + 1, len(bands))
        except BaseException:
            planes.discard()
            raise
    return _finished(result, planes)


def _result(frames, scales, levels, config, backend, plan, timings, rejected,
            calibrator) -> CombineResult:  # fmt: skip
    """The result before its planes (:func:`_finished`)."""
    first = frames[0]
    units = (_unit(getattr(f, "unit", None)) for f in frames)
    unit = next((u for u in units if u is not None), None)
    return CombineResult(
        image=None,
        uncertainty=None,
        count=None,
        mask=None,
        scales=scales,
        names=[f.name for f in frames],
        levels=levels,
        header=first.header.copy(),
        unit=None if unit is None else unit.to_string(),  # BUNIT "ADU" as "adu"
        config=config,
        backend=getattr(backend, "name", "custom"),
        plan=plan,
        timings=timings,
        rejected=rejected,
        calibration=None if calibrator is None else calibrator.cal.describe(),
        shape=first.shape,
    )


def _check_units(frames) -> None:
    """Frames in different units are refused (a ``ValueError`` naming both), as ccdproc
    refuses them; frames without a unit (arrays, files without BUNIT) take any."""
    first = first_unit = None
    for f in frames:
        unit = _unit(getattr(f, "unit", None))
        if unit is None:
            continue
        if first is None:
            first, first_unit = f, unit
        elif unit != first_unit:
            raise ValueError(
                f"{f.name}: unit {unit.to_string()!r} differs from {first.name}: "
                f"{first_unit.to_string()!r}; frames in different units are not combined "
                "(convert them first, as ccdproc requires too)"
            )


def _unit(unit):
    """An astropy unit from a frame's unit (a unit, a BUNIT text; ``ADU`` as CCDData.read
    takes it), None when there is none."""
    if unit is None or (isinstance(unit, str) and not unit.strip()):
        return None
    from astropy import units as u  # loaded with astropy.io.fits already

    if isinstance(unit, str):
        text = unit.strip()
        return u.Unit("adu" if text.lower() == "adu" else text, parse_strict="silent")
    return u.Unit(unit)


def _finished(result, planes) -> CombineResult:
    """The result with the planes, when they are in memory."""
    result.image = getattr(planes, "image", None)
    result.uncertainty = getattr(planes, "uncertainty", None)
    result.count = getattr(planes, "count", None)
    result.mask = None if result.count is None else result.count == 0
    return result


@dataclass
class _Context:
    frames: list
    bad_pixel_mask: np.ndarray | None
    masked: bool
    bands: list
    timings: dict
    timed: object
    progress: object


def _stage(ctx, feed, formats, k, i, r0, r1, seg) -> None:
    """Read frame ``i``'s rows [r0, r1) (stored bytes when it has a raw format, else its
    float32 values) and its mask rows straight into the feed's pinned staging of slot ``k``."""
    frame = ctx.frames[i]
    buf = feed.stage(k, i, r1 - r0, seg)
    if formats[i] is None:
        frame.read_rows(r0, r1, buf)
    else:
        frame.read_raw_rows(r0, r1, buf)
    if ctx.masked:
        m = _frame_mask(frame, ctx.bad_pixel_mask, r0, r1)
        dst = feed.mask_stage(k, r1 - r0, seg)
        if m is None:
            dst[...] = 0
        else:
            dst[...] = np.asarray(m, bool).reshape(-1)


def _fed(ctx, feed, formats, levels, pass1):
    """Pass 1 on the backend's host path: each whole frame read into one slot's pinned
    staging while the other slot's frame is converted and measured on the device."""
    if not pass1:
        return levels
    frames, timings = ctx.frames, ctx.timings
    n, nrows = len(frames), frames[0].shape[0]

    def read_frame(i):
        t = time.perf_counter()
        _stage(ctx, feed, formats, i % 2, i, 0, nrows, 0)
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


def _fed_bands(ctx, feed, formats, scales, weights, params, outputs, rejected, *, reread):
    """Pass 2 on the host path: each band read into one slot's staging (unless the stack
    is resident on the device) while the other slot's band is converted and combined."""
    frames, bands, timings = ctx.frames, ctx.bands, ctx.timings
    n = len(frames)

    def read_band(k):
        t = time.perf_counter()
        r0, r1 = bands[k]
        for i in range(n):
            _stage(ctx, feed, formats, k % 2, i, r0, r1, i)
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


def _raw_formats(backend, frames, plan, config, calibrator, dtype):
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


def _frame_mask(frame, bad_pixel_mask, r0, r1):
    m = frame.read_mask_rows(r0, r1)
    if bad_pixel_mask is not None:
        m = bad_pixel_mask[r0:r1] if m is None else (m | bad_pixel_mask[r0:r1])
    return m


def _band_mask(frames, bad_pixel_mask, r0, r1):
    out = np.zeros((len(frames), (r1 - r0) * frames[0].shape[1]), np.uint8)
    for i, f in enumerate(frames):
        m = _frame_mask(f, bad_pixel_mask, r0, r1)
        if m is not None:
            out[i] = m.ravel()
    return out


def _scales(config: CombineConfig, frames, levels, user_scales) -> np.ndarray:
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
