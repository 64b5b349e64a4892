"""The work units of a batch run: one product each, independent and idempotent, so a unit
runs the same in-process and on a Dask worker (:mod:`gpuflat.farm.dask`).

A unit combines its group (a single-image group, or a mosaic group extension by extension),
applies frame QA (a frame left out means the group is combined again without it), writes
the product atomically and returns its report entry. An existing product is skipped unless
``overwrite``; the writer never clobbers one that appears meanwhile.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from .. import _qa
from .._extensions import match_extensions
from .._frames import bad_pixel_mask, check_readable, open_frames
from .._mosaic import MosaicResult, combine_mosaic_files, mosaic_mask
from .._pipeline import combine_frames
from .._products import StreamedProduct, product_header, product_provenance, write_product
from .._version import __version__
from ..backends import get_backend
from ..errors import FrameReadError, GpuflatError

log = logging.getLogger("gpuflat")

_NOT_GIVEN = object()


class Refused(GpuflatError):
    """A group that is not combined, for a reason the user can see (its report entry says
    ``refused: ...``): too few frames to clip, before or after QA. Not a failure."""


def too_few(options, n, left_out=0, how="") -> str | None:
    """Why a group of ``n`` frames is refused (``left_out`` of its frames were left out
    ``how``), or None: fewer than ``options.min_frames`` (3 by default: with fewer, sigma
    clipping cannot tell an outlier from a good sample), never fewer than one."""
    if n >= max(1, options.min_frames):
        return None
    why = f"{n} frame{'s' if n != 1 else ''}"
    if left_out:
        why += f" after {left_out} left out {how}".rstrip()
    return f"{why}, fewer than --min-frames {options.min_frames}"


class Writer:
    """Products written off the critical path: a unit hands its product over (the write,
    its verification, the fsync of file and directory, the move into place) and this
    writer's thread does all of it while the next group is read and combined.

    One product is in flight at a time: handing over the next one waits for it, so a run
    holds at most one group's results beside those of the group being combined.
    ``settle(entry)`` waits for that entry's product and records how it went; ``close()``
    waits for every one. ``prepare``, when given, runs first on the writer's thread (the
    plotting modules' import, while the first group is read and combined)."""

    def __init__(self, prepare=None):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gpuflat-writer")
        if prepare is not None:
            self._pool.submit(prepare)
        self._pending = {}
        # how each write ended (None: written; else why not), recorded by this writer's
        # thread: an interrupt may stop the main thread after a product was queued but
        # before its future was kept in _pending
        self._ended = {}

    def __call__(self, target, timings, write):
        wait(self._pending.values())
        if str(target) in self._pending:  # planning refuses such clashes: never silently
            raise GpuflatError(f"{target}: another group of this run writes this product")
        self._pending[str(target)] = self._pool.submit(self._write, target, timings, write)

    def _write(self, target, timings, write):
        try:
            write_now(target, timings, write)
        except BaseException as exc:
            self._ended[str(target)] = str(exc) or repr(exc)
            raise
        self._ended[str(target)] = None

    def busy_cores(self) -> int:
        """1 while a product is being written, else 0."""
        return int(any(not f.done() for f in self._pending.values()))

    def handed(self, entry) -> bool:
        """Whether ``entry``'s product was handed over (and not settled yet): to be
        asked once the writer is closed."""
        return entry["product"] in self._pending or entry["product"] in self._ended

    def ready(self, entry) -> bool:
        future = self._pending.get(entry["product"])
        return future is None or future.done()

    def settle(self, entry) -> dict:
        future = self._pending.pop(entry["product"], None)
        if future is not None:
            try:
                future.result()
            except (GpuflatError, ValueError, OSError) as exc:
                entry["status"] = f"failed: {exc}"
        elif self._ended.get(entry["product"]) is not None:  # queued as the run stopped
            entry["status"] = f"failed: {self._ended[entry['product']]}"
        return entry

    def close(self):
        self._pool.shutdown(wait=True)


def write_now(target, timings, write):
    """Write and verify the product (``write(defer=True)`` returns what remains), then
    make it durable and move it into place; ``timings`` gets 'write' and 'sync'."""
    t0 = time.perf_counter()
    finish = write(defer=True)
    t1 = time.perf_counter()
    finish()
    timings["write"] = round(t1 - t0 - timings.get("plots", 0.0), 3)  # plots: drawn first
    timings["sync"] = round(time.perf_counter() - t1, 3)


def group_unit(
    options, group, target, backend=None, bad_pixels=_NOT_GIVEN, on_event=None, writer=None,
    workspace=None, entry=None,
):  # fmt: skip
    """One work unit: combine one group, write its product; returns its report entry.

    ``backend`` and ``bad_pixels`` are resolved here when left out (on a Dask worker);
    ``on_event("progress", {...})`` is called as bands or extensions are done; ``writer``
    (a :class:`Writer`) writes the product off the critical path, else the product is in
    place when this returns; ``workspace`` (a ``_memory.Workspace``) lends the stack;
    ``entry`` (:func:`new_entry`): the entry to fill, which the caller holds meanwhile (a
    unit stopped by an interrupt leaves it without its ``status``)."""

    def work(header, entry):
        nonlocal backend, bad_pixels
        if backend is None:
            backend = get_backend(options.combine.backend)
        if bad_pixels is _NOT_GIVEN:
            bad_pixels = bad_pixel_mask(options.mask)
        combine_group(
            options, group, backend, bad_pixels, target, header, on_event, writer or write_now,
            workspace, entry,
        )  # fmt: skip

    return _unit(options, group, target, work, entry)


def mosaic_unit(options, group, backend, target, parts) -> dict:
    """The last unit of a mosaic group combined extension by extension on a cluster: write
    the product from the extensions' results (``parts``); returns its report entry."""

    def work(header, entry):
        errors = [p for p in parts if isinstance(p, BaseException)]
        if errors:
            raise errors[0]
        t0 = time.perf_counter()
        # QA needs every extension: here, once they are all combined (a frame left out
        # means combining the group again, on this worker)
        result, verdicts = _mosaic_qa(options, group, backend, MosaicResult.merge(parts))
        entry.update(_write_mosaic(options, result, target, header, t0, verdicts, write_now))

    return _unit(options, group, target, work)


def new_entry(group, target) -> dict:
    """A unit's report entry before it runs: its group, product and files."""
    return {
        "group": group.label(),
        "product": str(target),
        "files": [str(f.path) for f in group.frames + group.skipped],
    }


def _unit(options, group, target, work, entry=None) -> dict:
    """A unit's report entry: skipped when the product exists (unless overwrite), with what
    the product's header records of how it was made, else filled by ``work(product_header,
    entry)``, written or failed with the expected error (the product's writer may still
    fill in some of it, and fail it, later: see :class:`Writer`)."""
    entry = new_entry(group, target) if entry is None else entry
    if target.exists() and not options.overwrite:
        entry.update(_existing(target))
        entry["status"] = "skipped (exists)"
        return entry
    try:
        why = too_few(options, len(group.frames))
        if why:
            raise Refused(why)
        work(_product_header(options), entry)
        # in a run, the writer may still fail it: the report says what was committed
        # (Writer.settle)
        entry["status"] = "written"
    except Refused as exc:
        entry["status"] = f"refused: {exc}"
    except (GpuflatError, ValueError, OSError) as exc:
        entry["status"] = f"failed: {exc}"
    return entry


def _existing(target) -> dict:
    """A skipped product's figures, as its header records them (and its NCOMBINE plane)."""
    try:
        return product_provenance(target)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        return {"note": f"not a product gpuflat can read ({exc})"}


def _product_header(options):
    """``product_header``, plus the config file's path in the provenance when there is one
    (``HIERARCH GPUFLAT CONFIG``)."""
    if not options.config:
        return product_header
    return functools.partial(_header_with_config, os.path.abspath(options.config))


def _header_with_config(config_path, *args, **kwargs):
    header = product_header(*args, **kwargs)
    header["HIERARCH GPUFLAT CONFIG"] = config_path
    return header


def _progress(on_event, group):
    if on_event is None:
        return None
    label = group.label()
    return lambda done, total: on_event("progress", {"group": label, "done": done, "total": total})


def combine_group(
    options, group, backend, bad_pixels, target, header_fn, on_event=None, write=write_now,
    workspace=None, entry=None,
):  # fmt: skip
    """Combine a group (QA, combined again without the frames it leaves out), write its
    plots and hand its product to ``write(target, timings, write)`` (:func:`write_now` or a
    :class:`Writer`); returns the unit's report entry (``entry``, filled, when given)."""
    entry = {} if entry is None else entry
    if group.mosaic:
        t0 = time.perf_counter()
        result = mosaic_result(options, group, backend, on_event=on_event)
        result, verdicts = _mosaic_qa(options, group, backend, result)
        entry.update(_write_mosaic(options, result, target, header_fn, t0, verdicts, write))
        return entry

    config = options.combine
    t0 = time.perf_counter()
    streamed = []  # the product of each combination, written as it is combined

    def header(result):
        return header_fn(
            result.header, names=result.names, scales=result.scales,
            params={**config.describe(), **(result.calibration or {}), **(result.masking or {})},
            backend=result.backend, version=__version__, masked=result.masked_pixels,
        )  # fmt: skip

    def stream(result, shape):
        memory = None if workspace is None else workspace.results
        streamed.append(StreamedProduct(target, header(result), shape, unit=result.unit,
                                        overwrite=options.overwrite, memory=memory))  # fmt: skip
        return streamed[-1]

    # the plots need the planes in memory; a compressed product is written whole; counts
    # of more than 32767 frames are not stored as int16
    results = None if options.plots or options.compress or len(group.frames) > 32767 else stream
    try:
        return _combine_group(options, group, backend, bad_pixels, target, header, results,
                              streamed, on_event, write, workspace, t0, entry)  # fmt: skip
    except BaseException:
        for product in streamed:
            product.discard()
        raise


def _combine_group(options, group, backend, bad_pixels, target, header, results, streamed,
                   on_event, write, workspace, t0, entry):  # fmt: skip
    config = options.combine
    with ExitStack() as stack:
        frames = []
        for info in group.frames:
            try:
                frames.extend(open_frames([info.path], stack))
            except GpuflatError as exc:
                if not options.skip_bad:
                    raise
                log.warning("%s: skipped (%s)", info.path, exc)
        why = too_few(options, len(frames), len(group.frames) - len(frames), "as unreadable")
        if why:
            raise Refused(why)
        want = ("median", "mean") if options.plots else ("median",)

        def calibrator():  # a fresh one for every combination of the group, closed with it
            c = options.calibration.calibrator()
            if c is not None:
                stack.callback(c.close)
            return c

        result = combine_frames(
            frames, config, backend, bad_pixel_mask=bad_pixels, want_levels=want,
            progress=_progress(on_event, group), calibrator=calibrator(), workspace=workspace,
            results=results, masking=options.masking,
        )  # fmt: skip
        timings = dict(result.timings)
        qa_entries = frame_entries(result)
        left_out = {} if options.no_qa else _qa.outliers(
            result.levels["median"], result.rejected_fraction, options.qa,
            limits=saturation_limits(options, group, result.names),
            saturated=result.saturated_fraction,
        )  # fmt: skip
        entry["frames"] = qa_entries  # the verdicts, also of a group QA leaves too small
        if left_out:
            keep = _leave_out(options, group, left_out, qa_entries)
            frames = [f for f in frames if f.name in keep]
            if streamed:
                streamed.pop().discard()
            result = combine_frames(
                frames, config, backend, bad_pixel_mask=bad_pixels, want_levels=want,
                calibrator=calibrator(), workspace=workspace, results=results,
                masking=options.masking,
            )  # fmt: skip
            timings = {k: v + result.timings[k] for k, v in timings.items()}
            final = {e["file"]: e for e in frame_entries(result)}
            for e in qa_entries:  # the scales of the frames kept, from the final combination
                e.update(final.get(e["file"], {}))
    entry.update({
        "frames": qa_entries,
        "frames_left_out": len(left_out),
        "frames_combined": len(result.names),
        "rejected_fraction": None,  # see _survivors
        "pixels_without_survivor": None,
        "seconds": round(time.perf_counter() - t0, 3),
        "bands": result.plan.nbands,
        "backend": result.backend,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    })  # fmt: skip
    if streamed:  # handed over below; until then, discarded on an interrupt
        finish = functools.partial(_write_streamed, streamed[-1], entry, len(result.names))
    else:
        _survivors(entry, int(result.count.sum(dtype=np.int64)), int(result.mask.sum()),
                   result.count.size, len(result.names))  # fmt: skip
        finish = functools.partial(
            write_product, target, result, header(result), unit=result.unit,
            overwrite=options.overwrite, compress=options.compress,
        )  # fmt: skip
    if options.plots:  # drawn by the writer, before the write swaps the planes' bytes
        finish = functools.partial(_plots_then, finish, target, group, result, qa_entries, entry)
    write(target, entry["timings"], finish)  # handed over: it cleans up after itself
    streamed.clear()  # (a product whose write has begun is left to it by discard)
    return entry


def _survivors(entry, survivors, empty, pixels, frames) -> None:
    """The entry's figures of the combined planes."""
    entry["rejected_fraction"] = float(1 - survivors / pixels / frames)
    entry["pixels_without_survivor"] = empty
    if empty:  # NaN there, MASK = 1: never with the guide's clipping, possible with a grow
        log.warning("%s: %d pixel(s) without a surviving sample (NaN, MASK = 1)",
                    entry["product"], empty)  # fmt: skip


def _write_streamed(product, entry, frames, defer=False):
    """A streamed product's ``write`` (on the run's writer, which the report waits for):
    its last bands stored, then its figures in the entry."""
    finish = product.write(defer=defer)
    _survivors(entry, product.survivors, product.empty, math.prod(product.shape), frames)
    return finish


def frame_entries(result) -> list[dict]:
    """The report's line for each frame of a combination: scale, levels, rejected fraction."""
    fractions = result.rejected_fraction
    masks = result.source_masks  # the mask pass's pixels, when it ran
    saturated = result.saturated_fraction
    return [
        {
            "file": name,
            "scale": float(s),
            **{f"level_{k}": float(v[i]) for k, v in result.levels.items()},
            "rejected_fraction": None if fractions is None else float(fractions[i]),
            **({} if masks is None else {"masked_pixels": int(masks.masked[i])}),
            **({} if saturated is None else {"saturated_pixels": int(masks.saturated[i])}),
            "qa": "kept",
        }
        for i, (name, s) in enumerate(zip(result.names, result.scales, strict=True))
    ]


def saturation_limits(options, group, names) -> list:
    """The saturation limit (``_qa.saturation_limit``) of each frame named, from the
    group's headers; with a calibration's gain, in electrons as the levels are."""
    infos = {str(i.path): i for i in group.frames}
    gain = options.calibration.gain
    limits = []
    for name in names:
        header = infos[name].header if name in infos else {}
        g = gain
        if isinstance(gain, str):  # a keyword: the frame's value (calibration checks it)
            g = header.get(gain)
            g = float(g) if isinstance(g, (int, float)) and not isinstance(g, bool) else None
        limits.append(_qa.saturation_limit(header, g))
    return limits


def _leave_out(options, group, left_out, verdicts) -> set[str]:
    """Say which frames QA leaves out (index -> why) and mark their report lines; returns
    the names of those kept (``Refused`` when fewer than --min-frames are)."""
    for i, why in sorted(left_out.items()):
        log.warning("%s: left out of group %s: %s", verdicts[i]["file"], group.label(), why)
        verdicts[i]["qa"] = f"left out: {why}"
    keep = {v["file"] for i, v in enumerate(verdicts) if i not in left_out}
    why = too_few(options, len(keep), len(left_out), "by QA")
    if why:
        raise Refused(why)
    return keep


def _mosaic_qa(options, group, backend, result):
    """Frame QA for a combined mosaic: an exposure is left out when the level of any of its
    extensions is outside the level range, or when its rejected fraction over all
    extensions is far above the rest of the group; the group is then combined again
    without it. Returns (result, per-exposure report lines)."""
    names = list(result.names)
    parts = list(result.extensions.values())
    rejected = np.sum([r.rejected for r in parts], axis=0)
    fractions = rejected / sum(r.image.size for r in parts)
    verdicts = [
        {"file": n, "rejected_fraction": float(f), "qa": "kept"}
        for n, f in zip(names, fractions, strict=True)
    ]
    if options.no_qa:
        return result, verdicts
    left_out = _qa.outliers(None, fractions, options.qa)
    limits = saturation_limits(options, group, names)  # from each file's first image
    for label, r in result.extensions.items():
        found = _qa.outliers(r.levels.get("median"), None, options.qa, limits=limits)
        for i, why in found.items():
            left_out.setdefault(i, f"extension {label}: {why}")
    if not left_out:
        return result, verdicts
    keep = _leave_out(options, group, left_out, verdicts)
    if backend is None:
        raise GpuflatError(f"group {group.label()}: no backend here to combine it again")
    result = mosaic_result(options, group, backend, specs=list(result.keys), only=keep)
    return result, verdicts


def mosaic_result(options, group, backend, specs=None, only=None, on_event=None):
    """Combine a mosaic group's extensions: ``specs`` ((EXTNAME, EXTVER) pairs), or those
    of ``options.ext``, or all of them; ``only``: the files to use (by name), default all."""
    if specs is None:
        specs = options.ext_specs
    infos = mosaic_files(options, group, specs, only)
    if options.plots:
        log.warning("group %s: --plots are not made for multi-extension groups", group.label())
    return combine_mosaic_files(
        [i.path for i in infos], options.combine, backend, ext=specs,
        scale_per=options.scale_per, mask=mosaic_mask(options.mask),
        extension_lists=[i.extensions for i in infos], want_levels=("median",),
        progress=_progress(on_event, group), calibration=options.calibration,
        masking=options.masking,
    )  # fmt: skip


def mosaic_files(options, group, specs, only=None):
    """The infos of the group's files to combine (``only``: those names): each file's
    extensions matched against the first's and readable; with ``skip_bad`` a file that fails
    either is left out with a warning, else its error fails the group."""
    infos = []
    for info in group.frames:
        if only is not None and str(info.path) not in only:
            continue
        ref = infos[0] if infos else info
        try:  # a missing extension or a truncated file names the file
            if info.broken:
                raise FrameReadError(f"{info.path}: {info.broken}")
            plan = match_extensions([ref.path, info.path], [ref.extensions, info.extensions], specs)
            check_readable(info.path, [indices[-1] for _, indices, _ in plan])
        except GpuflatError as exc:
            if not options.skip_bad:
                raise
            log.warning("%s: skipped (%s)", info.path, exc)
            continue
        infos.append(info)
    if not infos:
        raise GpuflatError(f"group {group.label()}: no readable frame")
    why = too_few(options, len(infos), len(group.frames) - len(infos), "as unreadable")
    if only is None and why:
        raise Refused(why)
    return infos


def _write_mosaic(options, result, target, header_fn, t0, verdicts, write) -> dict:
    """Hand a combined mosaic's product to ``write`` (as in :func:`combine_group`);
    returns its report entry (``verdicts``: the frame QA's line for every exposure)."""
    entry = {
        "scale_per": result.scale_per,
        "extensions": {
            label: {
                "scales": [float(s) for s in r.scales],
                "rejected_fraction": float(1 - r.count.mean() / len(r.names)),
                "frames_rejected_fraction": [float(f) for f in r.rejected_fraction],
                "pixels_without_survivor": int(r.mask.sum()),
                "bands": r.plan.nbands,
            }
            for label, r in result.extensions.items()
        },
        "frames": verdicts,
        "frames_left_out": sum(v["qa"] != "kept" for v in verdicts),
        "frames_combined": len(result.names),
        "seconds": round(time.perf_counter() - t0, 3),
        "backend": result.backend,
        "timings": {
            k: round(sum(r.timings[k] for r in result.extensions.values()), 3)
            for k in ("read", "levels", "combine", "wait")
        },
    }
    write(target, entry["timings"], functools.partial(
        result._write, target, overwrite=options.overwrite, compress=options.compress,
        product_header=header_fn,
    ))  # fmt: skip
    if result.levels is not None:  # scale per exposure: the exposures' levels and scales
        final = dict(zip(result.names, zip(result.scales, result.levels, strict=True), strict=True))
        for v in verdicts:
            if v["file"] in final:
                scale, level = final[v["file"]]
                v.update(scale=float(scale), level_exposure=float(level))
    return entry


def _plots_then(write, target, group, result, verdicts, entry, defer=False):
    """The group's plots, then its product's ``write``: on the run's writer, off the
    combining path (the next group is read and combined meanwhile)."""
    t = time.perf_counter()
    entry["plots"] = _plots(target, group, result, verdicts)
    entry["timings"]["plots"] = round(time.perf_counter() - t, 3)
    log.info("group %s: plots in %.2f s", group.label(), entry["timings"]["plots"])
    return write(defer=defer)


def load_plotting():
    """Import what the plots use (matplotlib's Agg canvas, astropy.visualization: about
    0.5 s), so that a group's plots are only drawn."""
    from .. import _plots

    _plots.load()


def _plots(target, group, result, verdicts):
    """The group's PNGs: every frame's levels (those QA left out marked, from their report
    lines ``verdicts``), the combined flat, and what scaling did to the levels."""
    from .. import _plots

    stem = target.with_suffix("")
    paths = {"levels": f"{stem}_levels.png", "flat": f"{stem}.png"}
    title = f"group {group.label()}"
    left_out = {
        k: v["qa"].removeprefix("left out: ")
        for k, v in enumerate(verdicts)
        if v["qa"] != "kept"
    }  # fmt: skip
    _plots.plot_levels(
        paths["levels"], [Path(v["file"]).name for v in verdicts],
        [v["level_median"] for v in verdicts], [v["level_mean"] for v in verdicts],
        title=title, left_out=left_out,
    )  # fmt: skip
    _plots.plot_flat(paths["flat"], result.image, title=f"combined flat, {title}")
    paths["scaling"] = f"{stem}_scaling.png"
    _plots.plot_scaling(
        paths["scaling"], result.levels["median"], result.scales, title=f"scaling, {title}"
    )
    if result.source_masks is not None:  # the first frame's mask over the frame
        paths["mask"] = f"{stem}_mask.png"
        _plots.plot_frame_mask(paths["mask"], result.names[0], result.source_masks.mask(0),
                               title=f"{Path(result.names[0]).name}, {title}")  # fmt: skip
    return paths
