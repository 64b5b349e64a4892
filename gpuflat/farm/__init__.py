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
import tempfile
import time
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path

from .._extensions import select_extensions
from .._frames import bad_pixel_mask
from .._memory import Workspace
from .._select import (
    expand_inputs,
    group_frames,
    is_product,
    name_clashes,
    read_info,
    similar_keys,
    split_by_keys,
    type_counts,
    type_matches,
    where_matches,
)
from .._version import __version__
from ..backends import get_backend
from ..errors import GpuflatError, NoFramesError
from . import mask, units  # noqa: F401 (mask: `gpuflat mask`, which cli reaches as farm.mask)
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
    others: list  # the readable frames not selected (products aside)
    # combined masters among the inputs (COMBINED = T or gpuflat's provenance): never used
    products: list = field(default_factory=list)
    # selected frames left out because they lack a group key that other frames have:
    # (frame, the keys it lacks)
    left_out: list = field(default_factory=list)
    # frames of the right image type that --where removed
    where_removed: list = field(default_factory=list)
    # what a run would refuse (select(strict=False) says it here instead of raising)
    problems: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    report: dict
    failed: int  # units that failed, plus unreadable files unless skip_bad

    @property
    def masters(self) -> int:
        """Products written or already in place."""
        return sum(e["status"] in ("written", "skipped (exists)") for e in self.report["groups"])

    @property
    def refused(self) -> int:
        """Groups refused (too few frames, none left after QA)."""
        return sum(e["status"].startswith("refused") for e in self.report["groups"])

    def summary(self) -> str:
        """One line: what became of the groups, and the run's time."""
        statuses = [e["status"] for e in self.report["groups"]]
        written = statuses.count("written")
        skipped = sum(s.startswith("skipped") for s in statuses)
        failed = len(statuses) - written - skipped - self.refused
        return (
            f"{written} master(s) written, {skipped} skipped (exist), {self.refused} "
            f"refused, {failed} failed, in {self.report.get('seconds', 0):.1f} s"
        )


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (``signal``: its name, ``"SIGTERM"``); the command raises
    it from its signal handlers. :func:`run` raises it again once the report is written,
    with ``outcome`` (an :class:`Outcome`) set."""

    def __init__(self, signal: str = "SIGINT"):
        super().__init__(signal)
        self.signal = signal
        self.outcome = None


def select(options: RunOptions, *, strict: bool = True) -> Selection:
    """Find the input files, read their headers, select the flats and group them.

    Combined masters (``COMBINED = T``) are never selected. A group key that no selected
    frame has, and two groups that would write one product name, are usage errors
    (``OptionError``); with ``strict=False`` (``gpuflat inspect``) they are listed in
    ``problems`` instead, and the frames grouped as they are."""
    paths, missing = expand_inputs(options.inputs, recursive=options.recursive)
    if missing:
        raise OptionError("; ".join(missing))
    infos, unreadable, others, products, where_removed = [], [], [], [], []
    for p in paths:
        try:
            info = read_info(p)
        except Exception as exc:  # any header problem makes the file unreadable
            unreadable.append((p, str(exc)))
            continue
        if is_product(info):
            products.append(info)
            continue
        typed = type_matches(info, imagetyp=options.imagetyp, imagetyp_key=options.imagetyp_key)
        chosen = typed and where_matches(info, options.where_pairs)
        (infos if chosen else others).append(info)
        if typed and not chosen:
            where_removed.append(info)
    problems = []
    try:
        infos, left_out = split_by_keys(
            infos, options.group_keys, allow_missing=options.allow_missing_key
        )
    except KeyError as exc:
        problems.append(_missing_key(options, exc.args[0], infos))
        left_out = []
    groups = group_frames(infos, options.group_keys)
    problems += [_clash(options, clash) for clash in name_clashes(groups)]
    if problems and strict:
        raise OptionError(problems[0])
    if options.ext_specs is not None:
        _check_ext(options.ext_specs, groups)
    return Selection(paths, groups, unreadable, others, products, left_out, where_removed, problems)


def _missing_key(options, key, infos) -> str:
    """The usage error of a group key that no selected frame has."""
    like = similar_keys(infos, key)
    flag = "--filter-key" if key == options.filter_key else "--group-by"
    text = (
        f"group key {key} (--group-by {options.group_by}): none of the {len(infos)} selected "
        f"flat(s) has a {key} keyword"
    )
    if like:
        text += f"; keys like it in their headers: {', '.join(like)}; name the right one "
        text += f"with {flag} KEY"
    else:
        text += f"; name the key that tells the groups apart with {flag} KEY"
    return text


def _clash(options, groups) -> str:
    """The usage error of groups that would write one product name."""
    labels = " and ".join(f"'{g.label()}'" for g in groups)
    return (
        f"groups {labels} would all be written as {groups[0].product_name()} (a file name "
        f"keeps only letters, digits and .+-; '' becomes p): group by another key "
        f"(--group-by), or select one of them (--where {options.group_keys[0]}=VALUE), or "
        f"rename the filter in the headers"
    )


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
    if not outdir.exists() and outdir.name.lower().endswith(_FITS_SUFFIXES):
        raise OptionError(
            f"--outdir {outdir}: a file name; -o names the folder the masters are written "
            "to, one per group, as combined_flat_filter_<filter>.fits (e.g. -o masters/)"
        )
    found = select(options)
    _say_selection(found, options)
    failed = 0
    # every unreadable input, said at once before any work: unreadable headers, and the
    # selected files that read_info found cut short (their groups fail, unless skip_bad)
    for p, why in found.unreadable:
        if options.skip_bad:
            log.warning("%s: skipped, unreadable (%s)", p, why)
        else:
            log.error("%s: unreadable (%s)", p, why)
    for p, why in ((f.path, f.broken) for g in found.groups for f in g.frames if f.broken):
        if options.skip_bad:
            log.warning("%s: %s; skipped", p, why)
        else:
            log.error("%s: %s", p, why)
    if not options.skip_bad:
        failed += len(found.unreadable)
    if not found.groups:
        raise NoFramesError(_no_flats(found, options))
    _check_writable(outdir, options.report)
    config = options.combine
    # with --scheduler the workers choose their backend (they may have the GPUs)
    backend = None if options.scheduler else get_backend(config.backend)
    bad_pixels = bad_pixel_mask(options.mask)
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
    work, settled = [], {}  # units to run; entries decided while planning, by group index
    targets = [outdir / group.product_name() for group in found.groups]
    # every group's entry: decided while planning, or its unit's
    report["planned"] = len(found.groups)
    for i, (group, target) in enumerate(zip(found.groups, targets, strict=True)):
        if group.split:
            others = [g for g in found.groups if g.key == group.key and g is not group]
            log.warning(
                "group %s: %d frame(s) of another shape or binning than the %d of %s; "
                "combined separately, as %s",
                group.label(), len(group.frames), sum(len(g.frames) for g in others),
                " and ".join(g.label() for g in others), target.name,
            )  # fmt: skip
        entry = _planned(options, group, target)
        if entry is None:
            work.append((group, target))
        else:
            settled[i] = entry
            emit("done", entry)
    entries, stopped = [], None  # the units' entries, as they settle
    try:
        if not work:
            pass
        elif options.distributed:

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
    # in the groups' order (product names are unique: planning refuses clashes; a Dask
    # unit's product path is absolute)
    ran = {os.path.abspath(entry["product"]): entry for entry in entries}
    report["groups"] = [
        settled[i] if i in settled else ran[os.path.abspath(target)]
        for i, target in enumerate(targets)
        if i in settled or os.path.abspath(target) in ran
    ]
    failed += sum(entry["status"].startswith("failed") for entry in report["groups"])
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


def _say_selection(found, options):
    """Warnings and notes about the frames selection left aside."""
    if found.products:
        typed = [
            i for i in found.products
            if type_matches(i, imagetyp=options.imagetyp, imagetyp_key=options.imagetyp_key)
        ]  # fmt: skip
        say = log.warning if typed else log.info
        say(
            "%d combined master(s) among the inputs (COMBINED = T) not used as flats, e.g. %s",
            len(found.products), found.products[0].path,
        )  # fmt: skip
    for info, lacks in found.left_out:
        log.warning(
            "%s: left out: no %s keyword, which the other flats have (--allow-missing-key "
            "combines such frames as a group of their own)",
            info.path, " or ".join(lacks),
        )  # fmt: skip


def _no_flats(found, options) -> str:
    """The NoFramesError of a run without flats: what was seen, and what removed it."""
    key = options.imagetyp_key
    rule = (
        f"{key} " + " or ".join(repr(v) for v in options.imagetyp) + " (--imagetyp)"
        if options.imagetyp
        else f"{key} containing 'flat'"
    )
    text = f"no flat frames among {len(found.paths)} file(s)"
    if found.where_removed:
        wheres = " ".join(f"--where {w}" for w in options.where)
        text += (
            f": {len(found.where_removed)} frame(s) have {rule}, and {wheres} removed every one "
            f"of them"
        )
    elif found.others:
        text += f": none has {rule}; {key} values seen: {type_counts(found.others, key)}"
        if not any(key in i.header for i in found.others):
            like = similar_keys(found.others, key)
            if like:
                text += f"; keys like {key}: {', '.join(like)} (--imagetyp-key KEY reads another)"
        else:
            text += " (--imagetyp VALUE selects another type; --imagetyp-key KEY reads another"
            text += " keyword)"
    notes = []
    if found.products:
        notes.append(f"{len(found.products)} combined master(s) (COMBINED = T) not used")
    if found.left_out:
        notes.append(f"{len(found.left_out)} left out for want of a group key")
    if found.unreadable:
        notes.append(f"{len(found.unreadable)} unreadable")
    return text + (f" ({'; '.join(notes)})" if notes else "")


_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fz", ".fits.gz")


def _check_writable(outdir: Path, report):
    """The output folder exists (created) and takes files, and so does the report's folder:
    checked before any work, so that a run never combines for nothing."""
    for flag, folder, create in (
        ("--outdir", outdir, True),
        ("--report", Path(report).parent if report else None, False),
    ):
        if folder is None:
            continue
        try:
            if create:
                folder.mkdir(parents=True, exist_ok=True)
            elif not folder.is_dir():
                raise OptionError(f"{flag} {report}: no folder {folder}")
            fd, probe = tempfile.mkstemp(prefix=".gpuflat-write-test-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            name = report if flag == "--report" else folder
            raise OptionError(
                f"{flag} {name}: cannot write in {folder} ({exc.strerror or exc})"
            ) from None


def _planned(options, group, target) -> dict | None:
    """The report entry of a group decided while planning (no work: refused for too few
    frames, failed for unreadable ones), or None for a group to combine. With skip_bad
    the unreadable frames are left out of the group here."""
    broken = [f for f in group.frames if f.broken]
    entry = {
        "group": group.label(),
        "product": str(target),
        "files": [str(f.path) for f in group.frames],
    }
    if broken and options.skip_bad:
        group.frames = [f for f in group.frames if not f.broken]
        group.skipped += broken
    if broken and not options.skip_bad:
        names = ", ".join(str(f.path) for f in broken)
        entry["status"] = f"failed: unreadable frame(s): {names} (--skip-bad leaves them out)"
        return entry
    why = units.too_few(options, len(group.frames), len(broken), "as unreadable")
    if why:
        entry["status"] = f"refused: {why}"
        return entry
    return None


def _run_in_process(options, work, backend, bad_pixels, emit, on_event, entries) -> None:
    """The units one after the other, each product written in the background while the
    next group is combined; ``entries`` gets each unit's entry as the unit starts. Every
    write is finished (or cleaned up) before this returns or raises: on an interrupt or an
    error, the product in flight is finished and the unit being combined is dropped (its
    product's temporary removed), and every entry is settled (a unit stopped before its
    product was handed over is "interrupted" or "failed: ...") and said ("done")."""
    said = 0
    writer = units.Writer(prepare=units.load_plotting if options.plots else None)
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
