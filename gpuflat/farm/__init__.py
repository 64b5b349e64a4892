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
import tempfile
import time
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
        "backend": backend.name if backend else f"{config.backend} (chosen by the workers)",
        "parameters": {**config.describe(), **options.calibration.describe()},
        "configuration": options.configuration(),
        "groups": [],
    }
    if options.config:
        report["config_file"] = os.path.abspath(options.config)
    t_start = time.perf_counter()
    work, settled = [], {}  # units to run; entries decided while planning, by group index
    for i, group in enumerate(found.groups):
        target = outdir / group.product_name()
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
    if not work:
        done = []
    elif options.distributed:
        done = dask.run_units(options, work, lambda entry: emit("done", entry))
    else:
        done = _run_in_process(options, work, backend, bad_pixels, emit, on_event)
    done = iter(done)
    report["groups"] = [settled.get(i) or next(done) for i in range(len(found.groups))]
    failed += sum(entry["status"].startswith("failed") for entry in report["groups"])
    report["seconds"] = round(time.perf_counter() - t_start, 3)
    if options.report:
        write_report(options.report, report)
    return Outcome(report, failed)


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
