"""The ``gpuflat`` command: a thin layer over the library.

Exit codes: 0 every group written (or already there), 1 some group failed (the others are
still written), 2 usage errors and inputs that do not exist.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from . import __version__, _farm, _qa, open_frames
from ._config import CombineConfig
from ._farm import ConfigError
from .errors import FrameReadError, GpuflatError

log = logging.getLogger("gpuflat")

EXAMPLES = """examples:
  gpuflat run night1/ -o masters/             flats in night1/, one master per filter
  gpuflat run 'raw/*.fits' --plots --report r.json
  gpuflat run @flats.txt --group-by FILTER,EXPTIME --method median
  gpuflat run night1/ --imagetyp 'Flat Field' --where INSTRUME=gpuflat-sim
  gpuflat run --config farm.toml --workers 8  options from a TOML file, 8 worker processes
  gpuflat inspect night1/                    what run would select and group
  gpuflat simulate demo/night                a realistic night to try it on
"""


class _UsageError(Exception):
    pass


def _float_or_none(text):
    return None if text.lower() in ("none", "") else float(text)


def _maxiters(text):
    return None if text.lower() in ("none", "0", "converge") else int(text)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuflat",
        description="Combine flat-field frames into master flats (astropy CCD guide method), "
        "on the GPU when there is one and on the CPU otherwise.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gpuflat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p):
        p.add_argument(
            "-v", "--verbose", action="count", default=0, help="more detail (-vv: debug)"
        )
        p.add_argument("-q", "--quiet", action="store_true", help="only errors")

    def selection(p, inputs_nargs="+"):
        p.add_argument(
            "inputs", nargs=inputs_nargs, metavar="INPUT",
            help="directories, files, globs or @listfiles",
        )  # fmt: skip
        p.add_argument("-r", "--recursive", action="store_true", help="descend into subdirectories")
        p.add_argument(
            "--imagetyp", action="append", default=[], metavar="VALUE",
            help="select frames whose IMAGETYP is exactly VALUE (any case; repeatable). "
            "Default: every IMAGETYP containing 'flat'",
        )  # fmt: skip
        p.add_argument(
            "--where", action="append", default=[], metavar="KEY=VALUE",
            help="also require a header value (repeatable)",
        )  # fmt: skip
        p.add_argument(
            "--group-by", default="FILTER", metavar="KEY[,KEY]",
            help="header keys that make a group (default FILTER)",
        )  # fmt: skip
        p.add_argument(
            "--ext", metavar="NAME[,NAME...]",
            help="multi-extension files: combine only these image extensions, by EXTNAME "
            "(any case); NAME,N names EXTNAME NAME with EXTVER N. Default: all of them",
        )  # fmt: skip

    run = sub.add_parser(
        "run", help="combine the flats, one master per group",
        description="Select flats by IMAGETYP, group them by filter, scale each frame by "
        "1/median, sigma-clip per pixel (median centre, MAD width, 5 sigma), average, and "
        "write one combined_flat_filter_<filter>.fits per group.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    selection(run, inputs_nargs="*")  # INPUTs may come from --config
    run.add_argument("-o", "--outdir", default=".", help="where products go (default: .)")
    run.add_argument(
        "--config", metavar="FILE.toml",
        help="read any option of run from a TOML file (keys named like the long flags, "
        "hyphens or underscores, e.g. sigma-low = 3 or sigma_low = 3; 'inputs' = [...]; "
        "paths relative to the file); flags given here override it",
    )  # fmt: skip
    run.add_argument("--overwrite", action="store_true", help="replace existing products")
    run.add_argument(
        "--compress", action="store_true",
        help="write the products tile-compressed, losslessly (GZIP_2, no quantisation)",
    )  # fmt: skip
    run.add_argument(
        "--skip-bad", action="store_true", help="leave out unreadable frames with a warning"
    )
    run.add_argument(
        "--plots",
        action="store_true",
        help="PNG plots per group (levels, flat, scaled vs unscaled)",
    )
    run.add_argument("--report", metavar="FILE.json", help="write a JSON report")
    eng = run.add_argument_group("combination (defaults follow the astropy CCD guide)")
    eng.add_argument("--method", choices=("average", "median", "sum"), default="average")
    eng.add_argument(
        "--scale", default="median",
        help="median (default), mean, none, or exptime:KEYWORD",
    )  # fmt: skip
    eng.add_argument("--clip", choices=("sigma", "none"), default="sigma")
    eng.add_argument("--sigma-low", type=float, default=5.0, metavar="N")
    eng.add_argument("--sigma-high", type=float, default=5.0, metavar="N")
    eng.add_argument("--center", choices=("median", "mean"), default="median")
    eng.add_argument("--dev", choices=("mad_std", "std"), default="mad_std")
    eng.add_argument(
        "--maxiters",
        type=_maxiters,
        default=1,
        metavar="N",
        help="clipping passes; 'none' = until nothing changes",
    )
    eng.add_argument(
        "--min-value",
        type=_float_or_none,
        default=None,
        metavar="ADU",
        help="reject raw values below",
    )
    eng.add_argument(
        "--max-value",
        type=_float_or_none,
        default=None,
        metavar="ADU",
        help="reject raw values above",
    )
    eng.add_argument("--nlow", type=int, default=0, help="reject the N lowest values per pixel")
    eng.add_argument("--nhigh", type=int, default=0, help="reject the N highest values per pixel")
    eng.add_argument(
        "--mask", metavar="FITS", help="bad-pixel mask applied to every frame (nonzero = bad)"
    )
    eng.add_argument(
        "--mem-limit",
        type=float,
        default=350e6,
        metavar="BYTES",
        help="working memory (default 350e6)",
    )
    eng.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="backend (default auto)"
    )
    eng.add_argument(
        "--scale-per", choices=("extension", "exposure"), default="extension",
        help="multi-extension files: scale each extension by its own level (default), or "
        "each exposure by one level over all its selected extensions (keeps the detectors' "
        "relative gains; holds one exposure in memory)",
    )  # fmt: skip
    qa = run.add_argument_group(
        "frame QA (on by default; the report lists every frame's level and rejected fraction)"
    )
    qa.add_argument(
        "--level-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
        help="leave out frames whose median level (raw ADU) is outside [LOW, HIGH]: "
        "saturated or too faint twilight flats",
    )  # fmt: skip
    qa.add_argument(
        "--qa-reject-factor", type=float, default=10.0, metavar="F",
        help="leave out frames whose rejected fraction is above 1%%, above F times the "
        "group's median fraction and above that median + 5 sigma of the group's fractions "
        "(groups of 3 or more frames; default 10)",
    )  # fmt: skip
    qa.add_argument("--no-qa", action="store_true", help="leave no frame out")
    farm = run.add_argument_group(
        "farm (needs the 'distributed' extra: pip install 'gpuflat[distributed]')"
    )
    farm.add_argument(
        "--workers", type=_positive_int, metavar="N",
        help="combine the groups in parallel on a local Dask cluster of N worker processes "
        "(one per GPU through dask-cuda, where installed, with --device cuda)",
    )  # fmt: skip
    farm.add_argument(
        "--threads-per-worker", type=_positive_int, default=1, metavar="N",
        help="threads of each local worker (default 1)",
    )  # fmt: skip
    farm.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="send the groups to an existing dask.distributed scheduler (e.g. "
        "tcp://head:8786); its workers must see the same files",
    )  # fmt: skip
    common(run)

    inspect = sub.add_parser("inspect", help="list the frames found and the groups run would make")
    selection(inspect)
    inspect.add_argument(
        "--all", action="store_true", help="also list frames that are not selected"
    )
    common(inspect)

    info = sub.add_parser("info", help="version and backends")
    common(info)

    sim = sub.add_parser("simulate", help="write a realistic simulated night")
    sim.add_argument("outdir")
    sim.add_argument("--size", default="512x768", metavar="ROWSxCOLS")
    sim.add_argument(
        "--n-dome", type=int, default=5, metavar="N", help="dome flats per filter (g'', r'')"
    )
    sim.add_argument("--n-twilight", type=int, default=7, metavar="N", help="twilight flats (V)")
    sim.add_argument("--dtype", choices=("float32", "uint16"), default="float32")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--overwrite", action="store_true")
    sim.add_argument(
        "--mef", type=int, default=0, metavar="K",
        help="write mosaics: a header-only primary HDU and K image extensions CCD1..CCDK, "
        "one per detector, each with its own gain",
    )  # fmt: skip
    common(sim)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _setup_logging(args)
    try:
        if args.command == "run" and args.config is not None:
            from ._farm import apply_config

            args = apply_config(args, argv, _build_parser)
            _setup_logging(args)
        return {"run": _run, "inspect": _inspect, "info": _info, "simulate": _simulate}[
            args.command
        ](args)
    except (_UsageError, ConfigError) as exc:
        print(f"gpuflat {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (GpuflatError, ValueError, TypeError, OSError) as exc:
        print(f"gpuflat {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gpuflat: interrupted", file=sys.stderr)
        return 130


def _setup_logging(args):
    level = (
        logging.ERROR
        if args.quiet
        else [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("gpuflat: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _show_progress(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _selected_groups(args):
    from ._select import expand_inputs, group_frames, is_selected, read_info

    paths, missing = expand_inputs(args.inputs, recursive=args.recursive)
    if missing:
        raise _UsageError("; ".join(missing))
    where = []
    for item in args.where:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _UsageError(f"--where {item!r}: expected KEY=VALUE")
        where.append((key.strip().upper(), value))
    group_by = tuple(k.strip().upper() for k in args.group_by.split(",") if k.strip())
    if not group_by:
        raise _UsageError("--group-by needs at least one header key")
    infos, unreadable, others = [], [], []
    for p in paths:
        try:
            info = read_info(p)
        except Exception as exc:  # any header problem makes the file unreadable
            unreadable.append((p, str(exc)))
            continue
        (infos if is_selected(info, imagetyp=args.imagetyp, where=where) else others).append(info)
    groups = group_frames(infos, group_by)
    if args.ext is not None:
        _check_ext(args.ext, groups)
    return paths, groups, unreadable, others


def _check_ext(ext, groups):
    """--ext names extensions that the first file of every mosaic group has (else exit 2)."""
    from ._mosaic import parse_ext_list, select_extensions

    try:
        specs = parse_ext_list(ext, param="--ext")
    except (ValueError, TypeError) as exc:
        raise _UsageError(str(exc)) from None
    mosaics = [g for g in groups if g.mosaic]
    if groups and not mosaics:
        raise _UsageError("--ext: none of the selected flats is a multi-extension file")
    for g in mosaics:
        first = g.frames[0]
        try:
            select_extensions(first.path, first.extensions, specs)
        except GpuflatError as exc:
            raise _UsageError(f"--ext: {exc}") from None


def _run(args) -> int:
    from . import _distributed
    from .backends import get_backend

    if not args.inputs:
        raise _UsageError("no INPUT given (on the command line or as 'inputs' in --config)")
    distributed = _distributed.wanted(args)
    if distributed:
        _distributed.require(args)  # fails fast without dask, before any work
    try:
        config = CombineConfig(
            method=args.method, scale=args.scale, clip=args.clip, sigma_low=args.sigma_low,
            sigma_high=args.sigma_high, center=args.center, dev=args.dev, maxiters=args.maxiters,
            min_value=args.min_value, max_value=args.max_value, nlow=args.nlow, nhigh=args.nhigh,
            mem_limit=args.mem_limit, backend=args.device,
        )  # fmt: skip
    except (ValueError, TypeError) as exc:
        raise _UsageError(str(exc)) from None
    _qa_config(args)  # validated here, once, before any work
    if args.mask and not os.path.isfile(args.mask):
        raise _UsageError(f"--mask {args.mask}: no such file")
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise _UsageError(f"--outdir {outdir}: not a directory")
    paths, groups, unreadable, _ = _selected_groups(args)
    failed = 0
    for p, why in unreadable:
        if args.skip_bad:
            log.warning("%s: skipped, unreadable (%s)", p, why)
        else:
            log.error("%s: unreadable (%s)", p, why)
            failed += 1
    if not groups:
        print(f"gpuflat run: error: no flat frames among {len(paths)} file(s)", file=sys.stderr)
        return 1
    # with --scheduler the workers choose their backend (they may have the GPUs)
    backend = None if args.scheduler else get_backend(config.backend)
    from . import _bad_pixel_mask

    bad_pixels = _bad_pixel_mask(args.mask)
    outdir.mkdir(parents=True, exist_ok=True)
    report = {
        "gpuflat": __version__,
        "backend": backend.name if backend else f"{config.backend} (chosen by the workers)",
        "parameters": config.describe(),
        "configuration": _farm.effective_configuration(args),
        "groups": [],
    }
    if args.config:
        report["config_file"] = os.path.abspath(args.config)
    t_start = time.perf_counter()
    # the work units: one product each (independent, idempotent)
    units = [(group, outdir / group.product_name()) for group in groups]
    for group in groups:
        if group.split:
            log.warning(
                "group %s: frames of another shape or binning share this key; combined separately",
                group.label(),
            )
    if distributed:
        report["groups"] = _distributed.run_units(args, config, units, _announce)
    else:
        for gi, (group, target) in enumerate(units, start=1):
            if target.exists() and not args.overwrite:
                log.info("[%d/%d] group %s: %s exists", gi, len(units), group.label(), target)
            else:
                log.info(
                    "[%d/%d] group %s: %d frames -> %s",
                    gi, len(units), group.label(), len(group.frames), target,
                )  # fmt: skip
            entry = _run_unit(args, group, config, target, backend, bad_pixels)
            report["groups"].append(entry)
            _announce(args, entry)
    failed += sum(entry["status"].startswith("failed") for entry in report["groups"])
    report["seconds"] = round(time.perf_counter() - t_start, 3)
    if args.report:
        _write_json(Path(args.report), report)
    return 1 if failed else 0


_NOT_GIVEN = object()


def _run_unit(args, group, config, target, backend=None, bad_pixels=_NOT_GIVEN) -> dict:
    """One work unit: combine one group, write its product; returns its report entry.

    Independent and idempotent (an existing product is skipped unless --overwrite), so it
    runs the same in-process and on a Dask worker, where ``backend`` and ``bad_pixels`` are
    left out and resolved here.
    """
    from . import _bad_pixel_mask
    from ._io import write_product
    from .backends import get_backend

    def work(header):
        nonlocal backend, bad_pixels
        if backend is None:
            backend = get_backend(config.backend)
        if bad_pixels is _NOT_GIVEN:
            bad_pixels = _bad_pixel_mask(args.mask)
        return _combine_group(
            args, group, config, backend, bad_pixels, target, header, write_product
        )

    return _unit(args, group, target, work)


def _mosaic_unit(args, group, config, backend, target, parts) -> dict:
    """The last work unit of a mosaic group combined extension by extension on a cluster:
    write the product from the extensions' results; returns its report entry."""
    from ._mosaic import MosaicResult

    def work(header):
        errors = [p for p in parts if isinstance(p, BaseException)]
        if errors:
            raise errors[0]
        t0 = time.perf_counter()
        # QA needs every extension: here, once they are all combined (a frame left out
        # means combining the group again, on this worker)
        result, verdicts = _mosaic_qa(args, group, config, backend, MosaicResult.merge(parts))
        return _write_mosaic(args, result, target, header, t0, verdicts)

    return _unit(args, group, target, work)


def _unit(args, group, target, work) -> dict:
    """A work unit's report entry: skipped when the product exists (unless --overwrite),
    else ``work(product_header)``'s entry, written or failed with the expected error."""
    entry = {
        "group": group.label(),
        "product": str(target),
        "files": [str(f.path) for f in group.frames],
    }
    if target.exists() and not args.overwrite:
        entry["status"] = "skipped (exists)"
        return entry
    try:
        entry.update(work(_farm.product_header_function(args)))
        entry["status"] = "written"
    except (GpuflatError, ValueError, OSError) as exc:
        entry["status"] = f"failed: {exc}"
    return entry


def _announce(args, entry):
    """What the user sees of a finished unit."""
    status = entry["status"]
    if status == "written":
        if not args.quiet:
            total = len(entry["files"])
            combined = entry.get("frames_combined", total)
            frames = f"{combined} of {total}" if combined != total else f"{total}"
            print(f"{entry['product']}  ({frames} frames, group {entry['group']})")
    elif status.startswith("skipped"):
        log.warning("%s: exists, skipped (use --overwrite to replace it)", entry["product"])
    else:
        log.error("group %s %s", entry["group"], status)


def _combine_group(args, group, config, backend, bad_pixels, target, product_header, write_product):
    from ._pipeline import combine_frames

    if group.mosaic:
        return _combine_mosaic_group(args, group, config, backend, target, product_header)

    progress = _progress_bar(args, f"{group.label():>10}")
    t0 = time.perf_counter()
    with ExitStack() as stack:
        frames = []
        for info in group.frames:
            try:
                frames.extend(open_frames([info.path], stack))
            except GpuflatError as exc:
                if not args.skip_bad:
                    raise
                log.warning("%s: skipped (%s)", info.path, exc)
        want = ("median", "mean") if args.plots else ("median",)
        result = combine_frames(
            frames, config, backend, bad_pixel_mask=bad_pixels, want_levels=want, progress=progress
        )
        qa_entries = _frame_entries(result)
        left_out = {} if args.no_qa else _qa.outliers(
            result.levels["median"], result.rejected_fraction, _qa_config(args)
        )  # fmt: skip
        if left_out:
            keep = _leave_out(group, left_out, qa_entries)
            frames = [f for f in frames if f.name in keep]
            result = combine_frames(
                frames, config, backend, bad_pixel_mask=bad_pixels, want_levels=want
            )
            final = {e["file"]: e for e in _frame_entries(result)}
            for e in qa_entries:  # the scales of the frames kept, from the final combination
                e.update(final.get(e["file"], {}))
        unscaled = None
        if args.plots and config.scale != "none":
            unscaled_config = dataclasses.replace(config, scale="none")
            unscaled = combine_frames(
                frames, unscaled_config, backend, bad_pixel_mask=bad_pixels
            ).image
    if progress is not None:
        progress.close()
    header = product_header(
        result.header, names=result.names, scales=result.scales,
        params=config.describe(), backend=result.backend, version=__version__,
    )  # fmt: skip
    write_product(
        target, result, header, unit=result.unit, overwrite=args.overwrite,
        compress=getattr(args, "compress", False),
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    entry = {
        "frames": qa_entries,
        "frames_left_out": len(left_out),
        "frames_combined": len(result.names),
        "rejected_fraction": float(1 - result.count.mean() / len(result.names)),
        "pixels_without_survivor": int(result.mask.sum()),
        "seconds": round(seconds, 3),
        "bands": result.plan.nbands,
        "backend": result.backend,
    }
    if args.plots:
        entry["plots"] = _plots(target, group, result, unscaled)
    return entry


def _frame_entries(result) -> list[dict]:
    """The report's line for each frame of a combination: scale, levels, rejected fraction."""
    fractions = result.rejected_fraction
    return [
        {
            "file": name,
            "scale": float(s),
            **{f"level_{k}": float(v[i]) for k, v in result.levels.items()},
            "rejected_fraction": None if fractions is None else float(fractions[i]),
            "qa": "kept",
        }
        for i, (name, s) in enumerate(zip(result.names, result.scales, strict=True))
    ]


def _leave_out(group, left_out, verdicts) -> set[str]:
    """Say which frames QA leaves out (index -> why) and mark their report lines; returns
    the names of those kept (an error when none is)."""
    for i, why in sorted(left_out.items()):
        log.warning("%s: left out of group %s: %s", verdicts[i]["file"], group.label(), why)
        verdicts[i]["qa"] = f"left out: {why}"
    keep = {v["file"] for i, v in enumerate(verdicts) if i not in left_out}
    if not keep:
        raise GpuflatError(f"group {group.label()}: QA left out every frame")
    return keep


def _qa_config(args):
    try:
        level_range = tuple(args.level_range) if args.level_range else None
        return _qa.QAConfig(level_range=level_range, reject_factor=args.qa_reject_factor)
    except ValueError as exc:
        text = str(exc).replace("level_range", "--level-range")
        raise _UsageError(text.replace("reject_factor", "--qa-reject-factor")) from None


def _combine_mosaic_group(args, group, config, backend, target, product_header):
    """A group of multi-extension files: every (selected) extension combined on its own,
    one product holding them all (see gpuflat._mosaic)."""
    t0 = time.perf_counter()
    result = _mosaic_result(args, group, config, backend)
    result, verdicts = _mosaic_qa(args, group, config, backend, result)
    return _write_mosaic(args, result, target, product_header, t0, verdicts)


def _mosaic_qa(args, group, config, backend, result):
    """Frame QA for a combined mosaic: an exposure is left out when the level of any of its
    extensions is outside --level-range, or when its rejected fraction over all extensions
    is far above the rest of the group; the group is then combined again without it.
    Returns (result, per-exposure report lines)."""
    names = list(result.names)
    parts = list(result.extensions.values())
    rejected = np.sum([r.rejected for r in parts], axis=0)
    fractions = rejected / sum(r.image.size for r in parts)
    verdicts = [
        {"file": n, "rejected_fraction": float(f), "qa": "kept"}
        for n, f in zip(names, fractions, strict=True)
    ]
    if args.no_qa:
        return result, verdicts
    qa = _qa_config(args)
    left_out = _qa.outliers(None, fractions, qa)
    for label, r in result.extensions.items():
        for i, why in _qa.outliers(r.levels.get("median"), None, qa).items():
            left_out.setdefault(i, f"extension {label}: {why}")
    if not left_out:
        return result, verdicts
    keep = _leave_out(group, left_out, verdicts)
    if backend is None:
        raise GpuflatError(f"group {group.label()}: no backend here to combine it again")
    specs = list(result.keys)
    result = _mosaic_result(args, group, config, backend, specs=specs, only=keep)
    return result, verdicts


def _mosaic_result(args, group, config, backend, specs=None, only=None):
    """Combine a mosaic group's extensions: ``specs`` ((EXTNAME, EXTVER) pairs), or those
    of --ext, or all of them; ``only``: the files to use (by name), default all."""
    from ._mosaic import combine_mosaic_files, mosaic_mask, parse_ext_list

    if specs is None and args.ext is not None:
        specs = parse_ext_list(args.ext, param="--ext")
    infos = _mosaic_files(args, group, specs, only)
    if args.plots:
        log.warning("group %s: --plots are not made for multi-extension groups", group.label())
    progress = _progress_bar(args, f"{group.label():>10}")
    result = combine_mosaic_files(
        [i.path for i in infos], config, backend, ext=specs,
        scale_per=getattr(args, "scale_per", "extension"), mask=mosaic_mask(args.mask),
        extension_lists=[i.extensions for i in infos], want_levels=("median",),
        progress=progress,
    )  # fmt: skip
    if progress is not None:
        progress.close()
    return result


def _mosaic_files(args, group, specs, only=None):
    """The infos of the group's files to combine (``only``: those names): each file's
    extensions matched against the first's and readable; with --skip-bad a file that fails
    either is left out with a warning, else its error fails the group."""
    from ._io import check_readable
    from ._mosaic import match_extensions

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
            if not args.skip_bad:
                raise
            log.warning("%s: skipped (%s)", info.path, exc)
            continue
        infos.append(info)
    if not infos:
        raise GpuflatError(f"group {group.label()}: no readable frame")
    return infos


def _write_mosaic(args, result, target, product_header, t0, verdicts) -> dict:
    """Write a combined mosaic; returns its report entry (``verdicts``: the frame QA's
    line for every exposure of the group)."""
    result._write(
        target, overwrite=args.overwrite, compress=getattr(args, "compress", False),
        product_header=product_header,
    )  # fmt: skip
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
    }
    if result.levels is not None:  # --scale-per exposure: the exposures' levels and scales
        final = dict(zip(result.names, zip(result.scales, result.levels, strict=True), strict=True))
        for v in verdicts:
            if v["file"] in final:
                scale, level = final[v["file"]]
                v.update(scale=float(scale), level_exposure=float(level))
    return entry


def _plots(target, group, result, unscaled):
    from . import _plots

    stem = target.with_suffix("")
    paths = {
        "levels": f"{stem}_levels.png",
        "flat": f"{stem}.png",
    }
    title = f"group {group.label()}"
    _plots.plot_levels(
        paths["levels"],
        [Path(n).name for n in result.names],
        result.levels["median"],
        result.levels["mean"],
        title=title,
    )
    _plots.plot_flat(paths["flat"], result.image, title=f"combined flat, {title}")
    if unscaled is not None:
        paths["scaled_vs_unscaled"] = f"{stem}_scaled_vs_unscaled.png"
        _plots.plot_scaled_vs_unscaled(
            paths["scaled_vs_unscaled"], result.image, unscaled, title=title
        )
    return paths


def _progress_bar(args, label):
    if not _show_progress(args):
        return None
    from tqdm import tqdm

    bar = tqdm(total=None, desc=label, unit="band", leave=False, file=sys.stderr)

    def update(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    update.close = bar.close
    return update


def _write_json(path: Path, data):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        value = obj.item()
        return None if isinstance(value, float) and not math.isfinite(value) else value
    return str(obj)


def _inspect(args) -> int:
    from . import backends

    paths, groups, unreadable, others = _selected_groups(args)
    rows = []
    selected = [f for g in groups for f in g.frames]
    for info in selected + (others if args.all else []):
        rows.append(
            (
                str(info.path),
                str(info.get("IMAGETYP")),
                str(info.get("FILTER")),
                str(info.get("EXPTIME")),
                f"{info.shape[0]}x{info.shape[1]}"
                + (f" x{len(info.extensions)} ext" if info.extensions else ""),
                _level(info.path, backends.NumbaBackend()),
                "yes" if info in selected else "no",
            )
        )
    header = ("file", "IMAGETYP", "FILTER", "EXPTIME", "shape", "median", "flat")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"\n{len(paths)} file(s), {len(selected)} flat(s) selected, {len(groups)} group(s):")
    for g in groups:
        print(
            f"  {g.label():<20} {len(g.frames):3d} frames  "
            f"{g.shape[0]}x{g.shape[1]}  -> {g.product_name()}"
        )
        if g.mosaic:
            print("      extensions: " + _extension_list(g, args.ext))
    for p, why in unreadable:
        print(f"  unreadable: {p}: {why}")
    return 1 if unreadable else 0


def _extension_list(group, ext):
    """The extensions run would combine for a mosaic group, with their shapes."""
    from ._io import ext_label
    from ._mosaic import parse_ext_list, select_extensions

    first = group.frames[0]
    specs = None if ext is None else parse_ext_list(ext, param="--ext")
    chosen = select_extensions(first.path, first.extensions, specs)
    return ", ".join(f"{ext_label(k)} {s[0]}x{s[1]}" for k, _, s in chosen)


def _level(path, backend):
    try:
        with ExitStack() as stack:
            (frame,) = open_frames([path], stack)
            buf = np.empty(frame.shape, np.float32)
            frame.read_rows(0, frame.shape[0], buf)
            return f"{backend.frame_level(buf, None, 'median'):.6g}"
    except GpuflatError:
        return "unreadable"


def _info(args) -> int:
    import numba

    from .backends import cuda_status

    print(f"gpuflat {__version__}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, numba {numba.__version__}")
    print(f"cpu backend: available (numba, {numba.config.NUMBA_NUM_THREADS} threads)")
    ok, why = cuda_status()
    if ok:
        from .backends._cuda import device_info  # pragma: no cover - needs a GPU

        print(f"cuda backend: available ({device_info()})")
    else:
        print(f"cuda backend: not available ({why})")
    return 0


def _simulate(args) -> int:
    from ._simulate import simulate_night

    try:
        rows, cols = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise _UsageError(f"--size {args.size!r}: expected ROWSxCOLS, e.g. 512x768") from None
    if rows < 16 or cols < 16:
        raise _UsageError(f"--size {args.size}: at least 16x16")
    if args.mef < 0:
        raise _UsageError(f"--mef {args.mef}: expected a number of extensions >= 0")
    paths = simulate_night(
        args.outdir, shape=(rows, cols), n_dome=args.n_dome, n_twilight=args.n_twilight,
        dtype=args.dtype, seed=args.seed, overwrite=args.overwrite, mef=args.mef,
    )  # fmt: skip
    if not args.quiet:
        print(f"wrote {len(paths)} files to {args.outdir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
