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

from . import __version__, open_frames
from ._config import CombineConfig
from .errors import GpuflatError

log = logging.getLogger("gpuflat")

EXAMPLES = """examples:
  gpuflat run night1/ -o masters/             flats in night1/, one master per filter
  gpuflat run 'raw/*.fits' --plots --report r.json
  gpuflat run @flats.txt --group-by FILTER,EXPTIME --method median
  gpuflat run night1/ --imagetyp 'Flat Field' --where INSTRUME=gpuflat-sim
  gpuflat inspect night1/                    what run would select and group
  gpuflat simulate demo/night                a realistic night to try it on
"""


class _UsageError(Exception):
    pass


def _float_or_none(text):
    return None if text.lower() in ("none", "") else float(text)


def _maxiters(text):
    return None if text.lower() in ("none", "0", "converge") else int(text)


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

    def selection(p):
        p.add_argument(
            "inputs", nargs="+", metavar="INPUT", help="directories, files, globs or @listfiles"
        )
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

    run = sub.add_parser(
        "run", help="combine the flats, one master per group",
        description="Select flats by IMAGETYP, group them by filter, scale each frame by "
        "1/median, sigma-clip per pixel (median centre, MAD width, 5 sigma), average, and "
        "write one combined_flat_filter_<filter>.fits per group.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    selection(run)
    run.add_argument("-o", "--outdir", default=".", help="where products go (default: .)")
    run.add_argument("--overwrite", action="store_true", help="replace existing products")
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
        return {"run": _run, "inspect": _inspect, "info": _info, "simulate": _simulate}[
            args.command
        ](args)
    except _UsageError as exc:
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
    return paths, group_frames(infos, group_by), unreadable, others


def _run(args) -> int:
    from ._io import product_header, write_product
    from .backends import get_backend

    try:
        config = CombineConfig(
            method=args.method, scale=args.scale, clip=args.clip, sigma_low=args.sigma_low,
            sigma_high=args.sigma_high, center=args.center, dev=args.dev, maxiters=args.maxiters,
            min_value=args.min_value, max_value=args.max_value, nlow=args.nlow, nhigh=args.nhigh,
            mem_limit=args.mem_limit, backend=args.device,
        )  # fmt: skip
    except (ValueError, TypeError) as exc:
        raise _UsageError(str(exc)) from None
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
    backend = get_backend(config.backend)
    from . import _bad_pixel_mask

    bad_pixels = _bad_pixel_mask(args.mask)
    outdir.mkdir(parents=True, exist_ok=True)
    report = {
        "gpuflat": __version__,
        "backend": backend.name,
        "parameters": config.describe(),
        "groups": [],
    }
    t_start = time.perf_counter()
    for gi, group in enumerate(groups, start=1):
        target = outdir / group.product_name()
        entry = {
            "group": group.label(),
            "product": str(target),
            "files": [str(f.path) for f in group.frames],
        }
        report["groups"].append(entry)
        if group.split:
            log.warning(
                "group %s: frames of another shape or binning share this key; combined separately",
                group.label(),
            )
        if target.exists() and not args.overwrite:
            log.warning("%s: exists, skipped (use --overwrite to replace it)", target)
            entry["status"] = "skipped (exists)"
            continue
        log.info(
            "[%d/%d] group %s: %d frames -> %s",
            gi,
            len(groups),
            group.label(),
            len(group.frames),
            target,
        )
        try:
            entry.update(
                _combine_group(
                    args, group, config, backend, bad_pixels, target, product_header, write_product
                )
            )
            entry["status"] = "written"
            if not args.quiet:
                print(f"{target}  ({len(group.frames)} frames, group {group.label()})")
        except (GpuflatError, ValueError, OSError) as exc:
            failed += 1
            entry["status"] = f"failed: {exc}"
            log.error("group %s failed: %s", group.label(), exc)
    report["seconds"] = round(time.perf_counter() - t_start, 3)
    if args.report:
        _write_json(Path(args.report), report)
    return 1 if failed else 0


def _combine_group(args, group, config, backend, bad_pixels, target, product_header, write_product):
    from ._pipeline import combine_frames

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
        want = ("median", "mean") if args.plots else ()
        result = combine_frames(
            frames, config, backend, bad_pixel_mask=bad_pixels, want_levels=want, progress=progress
        )
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
    write_product(target, result, header, unit=result.unit, overwrite=args.overwrite)
    seconds = time.perf_counter() - t0
    entry = {
        "frames": [
            {
                "file": name,
                "scale": float(s),
                **{f"level_{k}": float(v[i]) for k, v in result.levels.items()},
            }
            for i, (name, s) in enumerate(zip(result.names, result.scales, strict=True))
        ],
        "rejected_fraction": float(1 - result.count.mean() / len(result.names)),
        "pixels_without_survivor": int(result.mask.sum()),
        "seconds": round(seconds, 3),
        "bands": result.plan.nbands,
        "backend": result.backend,
    }
    if args.plots:
        entry["plots"] = _plots(target, group, result, unscaled)
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
                f"{info.shape[0]}x{info.shape[1]}",
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
    for p, why in unreadable:
        print(f"  unreadable: {p}: {why}")
    return 1 if unreadable else 0


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
    paths = simulate_night(
        args.outdir, shape=(rows, cols), n_dome=args.n_dome, n_twilight=args.n_twilight,
        dtype=args.dtype, seed=args.seed, overwrite=args.overwrite,
    )  # fmt: skip
    if not args.quiet:
        print(f"wrote {len(paths)} files to {args.outdir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
