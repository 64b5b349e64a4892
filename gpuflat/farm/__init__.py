"""The batch job behind ``gpuflat run``: select and group the flats, run one work unit per
product (in-process, or on a Dask cluster), write the report.

>>> from gpuflat.farm import RunOptions, run
>>> outcome = run(RunOptions(inputs=("night1/",), outdir="masters"))  # doctest: +SKIP
>>> outcome.report["groups"][0]["status"]  # doctest: +SKIP
'written'

``on_event(kind, data)`` tells the caller what happens: ``"start"`` before a unit runs
in-process (``index``, ``total``, ``group``, ``frames``, ``product``, ``exists``),
``"progress"`` as its bands or extensions are done (``group``, ``done``, ``total``),
``"done"`` with its report entry, and ``"compiling"`` once, just before numba compiles a
CPU kernel that its cache lacks for this machine (``what``, ``cache``: the folder,
``seconds``: about how long). Warnings and errors go to the ``gpuflat`` logger.

An interrupt (``KeyboardInterrupt``, or :class:`Interrupted`, which the command raises for
SIGINT, SIGTERM and SIGHUP) stops the run: the product being written is finished, the
one being combined is dropped (its temporary file removed), ``"done"`` is emitted for the
units that finished, and the report (``"complete": false``, ``"interrupted": true``) lists
them before the interrupt is raised again, with the :class:`Outcome` as its ``outcome``.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import time
from contextlib import nullcontext, suppress
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
    "Interrupted",
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


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (``signal``: its name, ``"SIGTERM"``); the command raises
    it from its signal handlers. :func:`run` raises it again once the report is written,
    with ``outcome`` (an :class:`Outcome`) set."""

    def __init__(self, signal: str = "SIGINT"):
        super().__init__(signal)
        self.signal = signal
        self.outcome = None


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


def run(options: RunOptions, on_event=None, *, command=None) -> Outcome:
    """Run the batch job; returns the report and the number of failures.

    ``command``: the command line that started it (the report's ``command``; the CLI gives
    its argv). Raises an interrupt again once the report is written (see above)."""
    emit = on_event or (lambda kind, data: None)
    started = datetime.datetime.now(datetime.timezone.utc)
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
        "date": started.isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "command": None if command is None else [str(a) for a in command],
        "complete": True,
        "interrupted": False,
        "backend": backend.name if backend else f"{config.backend} (chosen by the workers)",
        "parameters": {**config.describe(), **options.calibration.describe()},
        "configuration": options.configuration(),
        "groups": [],
    }
    if options.config:
        report["config_file"] = os.path.abspath(options.config)
    t_start = time.perf_counter()
    work = [(group, outdir / group.product_name()) for group in found.groups]
    report["planned"] = len(work)  # the groups' entries: those of the units that ran
    for group in found.groups:
        if group.split:
            log.warning(
                "group %s: frames of another shape or binning share this key; combined separately",
                group.label(),
            )
    entries, stopped = [], None  # the units' entries, as they settle
    try:
        if options.distributed:

            def done(entry):
                entries.append(entry)
                emit("done", entry)

            entries[:] = dask.run_units(options, work, done)  # in the order of work
        else:
            with _compile_notice(backend, emit):
                _run_in_process(options, work, backend, bad_pixels, emit, on_event, entries)
    except BaseException as exc:  # the report says what was finished; then it goes on
        stopped = exc
        report["complete"] = False
        if isinstance(exc, KeyboardInterrupt):
            report["interrupted"] = True
            report["signal"] = getattr(exc, "signal", "SIGINT")
        else:
            report["error"] = f"{type(exc).__name__}: {exc}"
    report["groups"] = entries
    failed += sum(entry["status"].startswith("failed") for entry in entries)
    report["seconds"] = round(time.perf_counter() - t_start, 3)
    if options.report:
        write_report(options.report, report)
    outcome = Outcome(report, failed)
    if stopped is not None:
        if isinstance(stopped, KeyboardInterrupt):
            stopped.outcome = outcome
        raise stopped
    return outcome


def _compile_notice(backend, emit):
    """``"compiling"`` once, just before numba compiles a kernel this run needs that its
    cache lacks for this machine (a first run here, a new CPU model or version)."""
    if backend is None or backend.name != "cpu":
        return nullcontext()
    from ..backends import _compile

    def say():
        emit("compiling", {"what": "the CPU kernels this run needs", "cache": _compile.cache_dir(),
                           "seconds": _compile.FIRST_RUN_SECONDS})  # fmt: skip

    return _compile.first_compile(say)


def _run_in_process(options, work, backend, bad_pixels, emit, on_event, entries) -> None:
    """The units one after the other, each product written in the background while the
    next group is combined; ``entries`` gets each unit's entry as the unit starts. Every
    write is finished (or cleaned up) before this returns or raises: on an interrupt or an
    error, the product in flight is finished and the unit being combined is dropped (its
    product's temporary removed), and every entry is settled (a unit stopped before its
    product was handed over is "interrupted" or "failed: ...") and said ("done")."""
    said = 0
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
            entry = units.new_entry(group, target)
            entries.append(entry)
            units.group_unit(
                options, group, target, backend, bad_pixels, on_event, writer, workspace, entry
            )
            say(block=False)
        say(block=True)
    except BaseException as exc:
        writer.close()  # the product in flight is finished, or fails and is removed
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {exc!r}"
        rest = entries[said:]
        for entry in rest:
            if "status" not in entry:  # its unit was stopped: after the handover, or before
                entry["status"] = "written" if writer.handed(entry) else why
            try:
                writer.settle(entry)
            except Exception as error:  # an unexpected one: the product is not there
                entry["status"] = f"failed: {error!r}"
        for entry in rest:
            with suppress(Exception):  # (a terminal that hung up)
                emit("done", entry)
        raise
    finally:
        writer.close()


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
