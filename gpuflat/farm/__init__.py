"""The batch job behind ``gpuflat run``: select and group the flats, run one work unit per
product (in-process, or on a Dask cluster), write the report.

>>> from gpuflat.farm import RunOptions, run
>>> outcome = run(RunOptions(inputs=("night1/",), outdir="masters"))  # doctest: +SKIP
>>> outcome.report["groups"][0]["status"]  # doctest: +SKIP
'written'

``on_event(kind, data)`` tells the caller what happens: ``"start"`` before a unit runs
in-process (``index``, ``total``, ``group``, ``frames``, ``product``, ``exists``),
``"progress"`` as its bands or extensions are done (``group``, ``done``, ``total``) and
``"done"`` with its report entry. Warnings and errors go to the ``gpuflat`` logger.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .._extensions import select_extensions
from .._frames import bad_pixel_mask
from .._memory import Workspace
from .._select import expand_inputs, group_frames, is_selected, read_info
from .._version import __version__
from ..backends import get_backend
from ..errors import GpuflatError, NoFramesError
from . import units
from .options import OptionError, RunOptions, build_options
from .report import write_report

__all__ = [
    "OptionError",
    "Outcome",
    "RunOptions",
    "Selection",
    "build_options",
    "extension_list",
    "median_level",
    "run",
    "select",
]

log = logging.getLogger("gpuflat")


@dataclass
class Selection:
    paths: list[Path]  # every file found
    groups: list  # the groups of selected flats (gpuflat._select.Group)
    unreadable: list[tuple[Path, str]]  # (file, why)
    others: list  # the readable frames not selected


@dataclass
class Outcome:
    report: dict
    failed: int  # units that failed, plus unreadable files unless skip_bad


def select(options: RunOptions) -> Selection:
    """Find the input files, read their headers, select the flats and group them."""
    paths, missing = expand_inputs(options.inputs, recursive=options.recursive)
    if missing:
        raise OptionError("; ".join(missing))
    infos, unreadable, others = [], [], []
    for p in paths:
        try:
            info = read_info(p)
        except Exception as exc:  # any header problem makes the file unreadable
            unreadable.append((p, str(exc)))
            continue
        chosen = is_selected(info, imagetyp=options.imagetyp, where=options.where_pairs)
        (infos if chosen else others).append(info)
    groups = group_frames(infos, options.group_keys)
    if options.ext_specs is not None:
        _check_ext(options.ext_specs, groups)
    return Selection(paths, groups, unreadable, others)


def _check_ext(specs, groups):
    """``--ext`` names extensions that the first file of every mosaic group has."""
    mosaics = [g for g in groups if g.mosaic]
    if groups and not mosaics:
        raise OptionError("--ext: none of the selected flats is a multi-extension file")
    for g in mosaics:
        first = g.frames[0]
        try:
            select_extensions(first.path, first.extensions, specs)
        except GpuflatError as exc:
            raise OptionError(f"--ext: {exc}") from None


def run(options: RunOptions, on_event=None) -> Outcome:
    """Run the batch job; returns the report and the number of failures."""
    emit = on_event or (lambda kind, data: None)
    if not options.inputs:
        raise OptionError("no INPUT given (on the command line or as 'inputs' in --config)")
    if options.distributed:
        from . import dask

        dask.require(options)  # fails fast without dask, before any work
    for flag, path in (("mask", options.mask), ("bias", options.bias), ("dark", options.dark)):
        if path and not os.path.isfile(path):
            raise OptionError(f"--{flag} {path}: no such file")
    outdir = Path(options.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise OptionError(f"--outdir {outdir}: not a directory")
    found = select(options)
    failed = 0
    for p, why in found.unreadable:
        if options.skip_bad:
            log.warning("%s: skipped, unreadable (%s)", p, why)
        else:
            log.error("%s: unreadable (%s)", p, why)
            failed += 1
    if not found.groups:
        raise NoFramesError(f"no flat frames among {len(found.paths)} file(s)")
    config = options.combine
    # with --scheduler the workers choose their backend (they may have the GPUs)
    backend = None if options.scheduler else get_backend(config.backend)
    bad_pixels = bad_pixel_mask(options.mask)
    outdir.mkdir(parents=True, exist_ok=True)
    report = {
        "gpuflat": __version__,
        "backend": backend.name if backend else f"{config.backend} (chosen by the workers)",
        "parameters": {**config.describe(), **options.calibration.describe()},
        "configuration": options.configuration(),
        "groups": [],
    }
    if options.config:
        report["config_file"] = os.path.abspath(options.config)
    t_start = time.perf_counter()
    work = [(group, outdir / group.product_name()) for group in found.groups]
    for group in found.groups:
        if group.split:
            log.warning(
                "group %s: frames of another shape or binning share this key; combined separately",
                group.label(),
            )
    if options.distributed:
        report["groups"] = dask.run_units(options, work, lambda entry: emit("done", entry))
    else:
        report["groups"] = _run_in_process(options, work, backend, bad_pixels, emit, on_event)
    failed += sum(entry["status"].startswith("failed") for entry in report["groups"])
    report["seconds"] = round(time.perf_counter() - t_start, 3)
    if options.report:
        write_report(options.report, report)
    return Outcome(report, failed)


def _run_in_process(options, work, backend, bad_pixels, emit, on_event) -> list[dict]:
    """The units one after the other, each product written in the background while the
    next group is combined; every write is finished (or cleaned up) before this returns."""
    entries, said = [], 0
    writer = units.Writer()
    workspace = Workspace(writer.busy_cores)  # one stack's memory, reused group after group

    def say(block):  # "done" for the finished units, in order
        nonlocal said
        while said < len(entries) and (block or writer.ready(entries[said])):
            emit("done", writer.settle(entries[said]))
            _log_timings(entries[said])
            said += 1

    try:
        for gi, (group, target) in enumerate(work, start=1):
            exists = target.exists() and not options.overwrite
            if exists:
                log.info("[%d/%d] group %s: %s exists", gi, len(work), group.label(), target)
            else:
                log.info(
                    "[%d/%d] group %s: %d frames -> %s",
                    gi, len(work), group.label(), len(group.frames), target,
                )  # fmt: skip
            emit("start", {
                "index": gi, "total": len(work), "group": group.label(),
                "frames": len(group.frames), "product": str(target), "exists": exists,
            })  # fmt: skip
            entries.append(
                units.group_unit(
                    options, group, target, backend, bad_pixels, on_event, writer, workspace
                )
            )
            say(block=False)
        say(block=True)
    finally:
        writer.close()
    return entries


def _log_timings(entry):
    timings = entry.get("timings")
    if timings:
        log.info(
            "group %s: %s", entry["group"], ", ".join(f"{k} {v:.3f} s" for k, v in timings.items())
        )


def median_level(path) -> float | None:
    """The exact median of a file's first image (None when it cannot be read)."""
    from contextlib import ExitStack

    import numpy as np

    from .._frames import open_frames

    try:
        with ExitStack() as stack:
            (frame,) = open_frames([path], stack)
            buf = np.empty(frame.shape, np.float32)
            frame.read_rows(0, frame.shape[0], buf)
            return get_backend("cpu").frame_level(buf, None, "median")
    except GpuflatError:
        return None


def extension_list(group, specs) -> list[tuple[str, tuple[int, int]]]:
    """The extensions a run combines for a mosaic group: (label, shape) each."""
    from .._frames import ext_label

    first = group.frames[0]
    return [(ext_label(k), s) for k, _, s in select_extensions(first.path, first.extensions, specs)]
