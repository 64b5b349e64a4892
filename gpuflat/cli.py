"""The ``gpuflat`` command: argparse, logging, printing and progress over the library.
Imported by nothing but the console entry point and ``python -m gpuflat``.

Exit codes: 0 every group written (or already there), 1 some group failed (the others are
still written), 2 usage errors and inputs that do not exist.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import farm
from ._version import __version__
from .errors import GpuflatError
from .farm import OptionError, options

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
        p.add_argument("-v", "--verbose", action="count", help="more detail (-vv: debug)")
        p.add_argument("-q", "--quiet", action="store_true", help="only errors")

    def selection(p, inputs_nargs="+"):
        p.add_argument(
            "inputs", nargs=inputs_nargs, metavar="INPUT",
            help="directories, files, globs or @listfiles",
        )  # fmt: skip
        p.add_argument("-r", "--recursive", action="store_true", help="descend into subdirectories")
        p.add_argument(
            "--imagetyp", action="append", metavar="VALUE",
            help="select frames whose IMAGETYP is exactly VALUE (any case; repeatable). "
            "Default: every IMAGETYP containing 'flat'",
        )  # fmt: skip
        p.add_argument(
            "--where", action="append", metavar="KEY=VALUE",
            help="also require a header value (repeatable)",
        )  # fmt: skip
        p.add_argument(
            "--group-by", metavar="KEY[,KEY]",
            help="header keys that make a group (default FILTER)",
        )  # fmt: skip
        p.add_argument(
            "--ext", metavar="NAME[,NAME...]",
            help="multi-extension files: combine only these image extensions, by EXTNAME "
            "(any case); NAME,N names EXTNAME NAME with EXTVER N. Default: all of them",
        )  # fmt: skip

    run = sub.add_parser(
        "run", help="combine the flats, one master per group",
        argument_default=argparse.SUPPRESS,  # defaults: RunOptions' (flags override --config)
        description="Select flats by IMAGETYP, group them by filter, scale each frame by "
        "1/median, sigma-clip per pixel (median centre, MAD width, 5 sigma), average, and "
        "write one combined_flat_filter_<filter>.fits per group (the guide's names: g'' -> gp, "
        "anything unsafe in a file name -> _; products carry COMBINED = T).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    selection(run, inputs_nargs="*")  # INPUTs may come from --config
    run.add_argument("-o", "--outdir", help="where products go (default: .)")
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
    eng.add_argument(
        "--method", choices=("average", "median", "sum"), help="combine (default average)"
    )
    eng.add_argument("--scale", help="median (default), mean, none, or exptime:KEYWORD")
    eng.add_argument("--clip", choices=("sigma", "none"), help="rejection (default sigma)")
    eng.add_argument("--sigma-low", type=float, metavar="N")
    eng.add_argument("--sigma-high", type=float, metavar="N")
    eng.add_argument(
        "--center", choices=("median", "mean"), help="clipping centre (default median)"
    )
    eng.add_argument("--dev", choices=("mad_std", "std"), help="clipping width (default mad_std)")
    number = _flag(options.float_or_none, "a number or 'none'")
    eng.add_argument(
        "--maxiters", type=_flag(options.maxiters, "an integer or 'none'"), metavar="N",
        help="clipping passes; 'none' = until nothing changes",
    )  # fmt: skip
    eng.add_argument("--min-value", type=number, metavar="ADU", help="reject raw values below")
    eng.add_argument("--max-value", type=number, metavar="ADU", help="reject raw values above")
    eng.add_argument("--nlow", type=int, help="reject the N lowest values per pixel")
    eng.add_argument("--nhigh", type=int, help="reject the N highest values per pixel")
    eng.add_argument(
        "--mask", metavar="FITS", help="bad-pixel mask applied to every frame (nonzero = bad)"
    )
    eng.add_argument(
        "--mem-limit", type=float, metavar="BYTES", help="working memory (default 350e6)"
    )
    eng.add_argument(
        "--device-mem-limit", type=number, metavar="BYTES",
        help="device memory a GPU combination may use; the stack stays on the GPU between "
        "the two passes when it fits (default: half the free device memory)",
    )  # fmt: skip
    eng.add_argument("--device", choices=("auto", "cpu", "cuda"), help="backend (default auto)")
    eng.add_argument(
        "--scale-per", choices=("extension", "exposure"),
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
        "--qa-reject-factor", type=float, metavar="F",
        help="leave out frames whose rejected fraction is above 1%%, above F times the "
        "group's median fraction and above that median + 5 sigma of the group's fractions "
        "(groups of 3 or more frames; default 10)",
    )  # fmt: skip
    qa.add_argument("--no-qa", action="store_true", help="leave no frame out")
    farm = run.add_argument_group(
        "farm (needs the 'distributed' extra: pip install 'gpuflat[distributed]')"
    )
    farm.add_argument(
        "--workers", type=_flag(options.positive_int, "an integer >= 1"), metavar="N",
        help="combine the groups in parallel on a local Dask cluster of N worker processes "
        "(one per GPU through dask-cuda, where installed, with --device cuda)",
    )  # fmt: skip
    farm.add_argument(
        "--threads-per-worker", type=_flag(options.positive_int, "an integer >= 1"), metavar="N",
        help="threads of each local worker (default 1)",
    )  # fmt: skip
    farm.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="send the groups to an existing dask.distributed scheduler (e.g. "
        "tcp://head:8786); its workers must see the same files",
    )  # fmt: skip
    common(run)

    inspect = sub.add_parser(
        "inspect", help="list the frames found and the groups run would make",
        argument_default=argparse.SUPPRESS,
    )  # fmt: skip
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


def _flag(convert, expected):
    """An argparse type from one of the options' text converters."""

    def parse(text):
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None

    parse.__name__ = convert.__name__
    return parse


def main(argv=None) -> int:
    """Run the command line; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    command = args.command
    try:
        if command in ("run", "inspect"):
            flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
            opts = farm.build_options(flags, getattr(args, "config", None))
            _setup_logging(opts.verbose, opts.quiet)
            return _run(opts) if command == "run" else _inspect(opts, getattr(args, "all", False))
        _setup_logging(args.verbose, args.quiet)
        return _info() if command == "info" else _simulate(args)
    except OptionError as exc:
        print(f"gpuflat {command}: error: {exc}", file=sys.stderr)
        return 2
    except (GpuflatError, ValueError, TypeError, OSError) as exc:
        print(f"gpuflat {command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gpuflat: interrupted", file=sys.stderr)
        return 130


def _setup_logging(verbose, quiet):
    level = (
        logging.ERROR
        if quiet
        else [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose or 0, 2)]
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("gpuflat: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


class _Printer:
    """What the user sees of a run: a progress bar per group on a terminal, a line per
    product written."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bars = {}

    def __call__(self, kind, data):
        if kind == "progress":
            self._progress(data)
        elif kind == "done":
            bar = self.bars.pop(data["group"], None)
            if bar is not None:
                bar.close()
            self._announce(data)

    def _progress(self, data):
        if self.quiet or not sys.stderr.isatty():
            return
        bar = self.bars.get(data["group"])
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(
                total=None, desc=f"{data['group']:>10}", unit="band", leave=False,
                file=sys.stderr,
            )  # fmt: skip
            self.bars[data["group"]] = bar
        bar.total, bar.n = data["total"], data["done"]
        bar.refresh()

    def _announce(self, entry):
        status = entry["status"]
        if status == "written":
            if not self.quiet:
                total = len(entry["files"])
                combined = entry.get("frames_combined", total)
                frames = f"{combined} of {total}" if combined != total else f"{total}"
                print(f"{entry['product']}  ({frames} frames, group {entry['group']})")
        elif status.startswith("skipped"):
            log.warning("%s: exists, skipped (use --overwrite to replace it)", entry["product"])
        else:
            log.error("group %s %s", entry["group"], status)


def _run(opts) -> int:
    outcome = farm.run(opts, _Printer(opts.quiet))
    return 1 if outcome.failed else 0


def _inspect(opts, show_all) -> int:
    found = farm.select(opts)
    selected = [f for g in found.groups for f in g.frames]
    rows = []
    for info in selected + (found.others if show_all else []):
        level = farm.median_level(info.path)
        rows.append(
            (
                str(info.path),
                str(info.get("IMAGETYP")),
                str(info.get("FILTER")),
                str(info.get("EXPTIME")),
                f"{info.shape[0]}x{info.shape[1]}"
                + (f" x{len(info.extensions)} ext" if info.extensions else ""),
                "unreadable" if level is None else f"{level:.6g}",
                "yes" if info in selected else "no",
            )
        )
    header = ("file", "IMAGETYP", "FILTER", "EXPTIME", "shape", "median", "flat")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(
        f"\n{len(found.paths)} file(s), {len(selected)} flat(s) selected, "
        f"{len(found.groups)} group(s):"
    )
    for g in found.groups:
        print(
            f"  {g.label():<20} {len(g.frames):3d} frames  "
            f"{g.shape[0]}x{g.shape[1]}  -> {g.product_name()}"
        )
        if g.mosaic:
            exts = farm.extension_list(g, opts.ext_specs)
            print("      extensions: " + ", ".join(f"{k} {s[0]}x{s[1]}" for k, s in exts))
    for p, why in found.unreadable:
        print(f"  unreadable: {p}: {why}")
    return 1 if found.unreadable else 0


def _info() -> int:
    import numba
    import numpy as np

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
        raise OptionError(f"--size {args.size!r}: expected ROWSxCOLS, e.g. 512x768") from None
    if rows < 16 or cols < 16:
        raise OptionError(f"--size {args.size}: at least 16x16")
    if args.mef < 0:
        raise OptionError(f"--mef {args.mef}: expected a number of extensions >= 0")
    paths = simulate_night(
        args.outdir, shape=(rows, cols), n_dome=args.n_dome, n_twilight=args.n_twilight,
        dtype=args.dtype, seed=args.seed, overwrite=args.overwrite, mef=args.mef,
    )  # fmt: skip
    if not args.quiet:
        print(f"wrote {len(paths)} files to {args.outdir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
