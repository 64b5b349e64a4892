"""Backend-agnostic orchestration of one combination: checks, the band plan and the stack's
memory, then pass 1 (:mod:`gpuflat._levels`: frame levels, scale factors) and pass 2
(:mod:`gpuflat._bands`: row bands through a backend's ``combine_band`` while the next band
is being read), on the plain path or a backend's host path."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits

from . import _grow, _levels
from ._bands import combine_bands, combine_fed
from ._config import CombineConfig
from ._levels import measure, measure_fed, raw_formats
from ._memory import Planes
from ._plan import BandPlan, plan_bands
from ._stream import Context
from .errors import NoFramesError, ShapeMismatchError

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
    survive the extrema window or the clipping (None when a custom combiner ran). ``unit``
    is the product's: ``""`` (dimensionless) for a flat normalised by its level (``scale``
    ``median`` or ``mean``), else the frames' unit (None when none had one: written as adu).
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
    #: the mask pass's options as they apply (:meth:`gpuflat._sources.Masking.describe`),
    #: None without one
    masking: dict | None = None
    #: the mask pass's masks (:class:`gpuflat._sources.FrameMasks`: per frame, packed, with
    #: the pixels each masks, ``masked``, and of those the saturated ones, ``saturated``)
    source_masks: object = None

    @property
    def masked_pixels(self) -> np.ndarray | None:
        """Per frame, the pixels its mask from the mask pass (sources, grown, and saturated
        pixels) left out; None without a mask pass."""
        return None if self.source_masks is None else self.source_masks.masked

    @property
    def saturated_fraction(self) -> np.ndarray | None:
        """Per frame, the fraction of its pixels at or above the saturation level; None
        without one."""
        if self.source_masks is None or self.masking.get("saturation") is None:
            return None
        return self.source_masks.saturated / max(1, math.prod(self.shape))

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
            params={**self.config.describe(), **(self.calibration or {}), **(self.masking or {})},
            backend=self.backend, version=__version__, masked=self.masked_pixels,
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
            unit="adu" if self.unit is None else self.unit,
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
    masking=None,
) -> CombineResult:
    """Combine opened frames (``_frames.FitsFrame`` / ``_frames.ArrayFrame``) band by band.

    ``band_combiner(data, mask, scales, weights)`` replaces the backend's kernel (the
    ccdproc compatibility path uses it; not with a grow); ``progress(done, total)`` is
    called per band; ``calibrator`` (a :class:`gpuflat._calibrate.Calibrator`, fresh for
    this call) calibrates every frame as its bands are read, in both passes; ``workspace``
    (a :class:`Workspace`) lends the stack, else it is allocated for this call;
    ``results(result, shape)``, when given, makes the object that takes the results band by
    band instead of a :class:`Planes` (called once the scales are known, with the
    CombineResult as it will be returned, its planes None), and the result keeps None for
    the planes. ``masking`` (a :class:`gpuflat._sources.Masking`) adds the mask pass:
    saturated pixels, and sources found against a provisional master (:func:`_masked`).
    """
    if not frames:
        raise NoFramesError("no frames to combine")
    extra = (0, 0)
    if calibrator is not None:
        frames = [calibrator.wrap(f) for f in frames]
        extra = calibrator.memory()
    options = dict(
        dtype=dtype, out_dtype=out_dtype, clip_scaled=clip_scaled, bad_pixel_mask=bad_pixel_mask,
        want_levels=want_levels, band_combiner=band_combiner, progress=progress,
        calibrator=calibrator, workspace=workspace, results=results, extra=extra,
    )  # fmt: skip
    if masking is not None and masking.active:
        return _masked(frames, config, backend, masking, **options)
    return _combine(frames, config, backend, **options)


def _masked(frames, config, backend, masking, *, bad_pixel_mask, calibrator, extra, progress,
            results, **options) -> CombineResult:  # fmt: skip
    """The combination with the mask pass (:mod:`gpuflat._sources`): with source masks,
    ``source_iters`` rounds of a provisional combination (every frame with its masks of the
    previous round, none at first) and a mask pass against its master, then the
    combination with the last masks; saturation alone: the mask pass, then the combination.
    The packed masks are held throughout, so the combinations plan under ``mem_limit``
    less their bytes. Every file is read by each combination (once with one band, else
    twice) and by each mask pass (once with one band)."""
    from . import _sources

    t0 = time.perf_counter()
    _check_shapes(frames)
    levels = _sources.saturation_levels(frames, masking.saturation)
    held = _sources.FrameMasks.nbytes_for(len(frames), frames[0].shape)
    if held >= config.mem_limit:
        raise ValueError(
            f"mem_limit={config.mem_limit:.4g} bytes cannot hold the masks of {len(frames)} "
            f"frames of {frames[0].shape[0]}x{frames[0].shape[1]} ({held} bytes) and more"
        )
    inner = dataclasses.replace(config, mem_limit=config.mem_limit - held)
    common = dict(bad_pixel_mask=bad_pixel_mask, calibrator=calibrator, extra=extra)
    masks = None
    for _ in range(masking.source_iters if masking.mask_sources else 1):
        master = scales = None
        if masking.mask_sources:
            provisional = _combine(_sources.masked_frames(frames, masks), inner, backend,
                                   progress=None, results=None, **common, **options)  # fmt: skip
            master, scales = provisional.image, provisional.scales
            del provisional
        masks = _sources.mask_pass(
            frames, masking, master=master, scales=scales, levels=levels,
            mem_limit=config.mem_limit, **common,
        )  # fmt: skip
        del master
    seconds = time.perf_counter() - t0
    result = _combine(_sources.masked_frames(frames, masks), inner, backend, progress=progress,
                      results=results, applied=(masking, masks), **common, **options)  # fmt: skip
    result.config = config
    result.timings["masks"] = seconds
    return result


def _check_shapes(frames) -> None:
    shape = frames[0].shape
    for f in frames[1:]:
        if f.shape != shape:
            raise ShapeMismatchError(
                f"{f.name}: shape {f.shape[0]}x{f.shape[1]} differs from "
                f"{frames[0].name}: {shape[0]}x{shape[1]}"
            )


def _combine(frames, config, backend, *, dtype, out_dtype, clip_scaled, bad_pixel_mask,
             want_levels, band_combiner, progress, calibrator, workspace, results, extra,
             applied=None) -> CombineResult:  # fmt: skip
    """One combination of frames (wrapped by the calibrator already); ``applied``: the
    mask pass's (options, masks) that the frames' masks include, for the result."""
    n = len(frames)
    shape = frames[0].shape
    if band_combiner is not None and config.grow > 0:
        raise ValueError("grow is not available with a custom band_combiner")
    _check_shapes(frames)
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
        and not config.grow > 0  # the grow's two combinations take the plain path
        and not callable(config.scale)
        and np.dtype(dtype) == np.float32
    )
    formats = [getattr(f, "raw_format", None) for f in frames] if fed else []
    itemsize = max([np.dtype(dtype).itemsize] + [np.dtype(f.dtype).itemsize for f in formats if f])
    halo = _grow.halo(config.grow)
    plan = plan_bands(
        n, shape, itemsize=itemsize, masked=masked, mem_limit=config.mem_limit,
        extra_per_row=extra[0], extra_fixed=extra[1], halo=halo,
        pass2_per_row=shape[1] * _grow.bytes_per_pixel(n) if config.grow > 0 else 0,
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
    ctx = Context(frames, bad_pixel_mask, masked, bands, timings, timed, progress)
    if fed:
        feed = backend.open_feed(
            formats, shape, rows=plan.rows, masked=masked, pass1=pass1, hows=tuple(levels),
            device_mem_limit=config.device_mem_limit,
        )  # fmt: skip
        if feed.rows != plan.rows:  # thinner bands, for the device budget
            ctx.bands = [(r, min(nrows, r + feed.rows)) for r in range(0, nrows, feed.rows)]
        with feed:
            rejected = np.zeros(n, np.int64)
            levels = measure_fed(ctx, feed, formats, levels, pass1)
            scales = _levels.scales(config, frames, levels, [])
            result = _result(frames, scales, levels, config, backend, plan, timings, rejected,
                             calibrator, applied)  # fmt: skip
            planes = Planes(shape, out_dtype) if results is None else results(result, shape)
            try:  # the device lands the rows of every band in the whole planes' rows
                outputs = tuple(a.reshape(shape) for a in planes.rows(0, nrows))
                combine_fed(ctx, feed, formats, scales, weights, params, outputs, rejected,
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
    raw = raw_formats(backend, frames, plan, config, calibrator, dtype) if pass1 else None
    item = np.dtype(dtype).itemsize
    band = n * min(nrows, plan.rows + 2 * halo) * cols * item  # bytes, with the grow's halo
    frame = nrows * cols * max([f.dtype.itemsize for f in raw] if raw else [item])
    size = band if plan.single else max(2 * band, 2 * frame * pass1)
    memory = np.empty(size, np.uint8) if workspace is None else workspace.stack(size, np.uint8)
    buffers = [memory.view(dtype)] if plan.single else []
    stack = buffers[0].reshape(n, nrows, cols) if plan.single else None
    user_scales = []
    reader = ThreadPoolExecutor(1, thread_name_prefix="gpuflat-reader")
    with reader:
        if pass1:
            user_scales = measure(
                ctx, reader, backend, config, levels, memory=memory, stack=stack,
                frame_bytes=frame, raw=raw, dtype=dtype, plan=plan, workspace=workspace,
            )  # fmt: skip
        if not plan.single:  # pass 2's two band buffers, where pass 1's frames were
            buffers = [memory[k * band : (k + 1) * band].view(dtype) for k in range(2)]
        scales = _levels.scales(config, frames, levels, user_scales)

        # Pass 2: bands, the next band read while this one is combined.
        rejected = None if band_combiner is not None else np.zeros(n, np.int64)
        result = _result(frames, scales, levels, config, backend, plan, timings, rejected,
                         calibrator, applied)  # fmt: skip
        planes = Planes(shape, out_dtype) if results is None else results(result, shape)
        combine_bands(
            ctx, reader, backend, planes, buffers=buffers, stack=stack, pass1=pass1,
            scales=scales, weights=weights, params=params, rejected=rejected,
            band_combiner=band_combiner, workspace=workspace, grow=config.grow,
        )  # fmt: skip
    return _finished(result, planes)


def _result(frames, scales, levels, config, backend, plan, timings, rejected,
            calibrator, applied=None) -> CombineResult:  # fmt: skip
    """The result before its planes (:func:`_finished`)."""
    first = frames[0]
    if config.scale in ("median", "mean"):  # frame / level: a normalised flat has no unit
        unit = ""
    else:  # BUNIT "ADU" as "adu"
        units = (_unit(getattr(f, "unit", None)) for f in frames)
        unit = next((u.to_string() for u in units if u is not None), None)
    return CombineResult(
        image=None,
        uncertainty=None,
        count=None,
        mask=None,
        scales=scales,
        names=[f.name for f in frames],
        levels=levels,
        header=first.header.copy(),
        unit=unit,
        config=config,
        backend=getattr(backend, "name", "custom"),
        plan=plan,
        timings=timings,
        rejected=rejected,
        calibration=None if calibrator is None else calibrator.cal.describe(),
        shape=first.shape,
        masking=None if applied is None else applied[0].describe(),
        source_masks=None if applied is None else applied[1],
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
