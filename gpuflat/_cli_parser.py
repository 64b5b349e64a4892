"""The argument parser of the ``gpuflat`` command (part of the command line: imported by
:mod:`gpuflat.cli` only). Options of ``run`` and ``inspect`` have no defaults here: the
defaults are :class:`gpuflat.farm.RunOptions`', so that flags override a ``--config`` file."""

from __future__ import annotations

import argparse
import difflib

from ._cli_mask import mask_parser
from ._version import __version__
from .farm import options

EXAMPLES = """examples:
  gpuflat run night1/ -o masters/             flats in night1/, one master per filter
  gpuflat run 'raw/*.fits' --plots --report r.json
  gpuflat run @flats.txt --group-by FILTER,EXPTIME --method median
  gpuflat run night1/ --imagetyp 'Flat Field' --where INSTRUME=gpuflat-sim
  gpuflat run --config farm.toml --workers 8  options from a TOML file, 8 worker processes
  gpuflat inspect night1/                    what run would select and group
  gpuflat simulate demo/night                a realistic night to try it on
  gpuflat simulate demo/sky --sky            dithered sky frames with stars, and the true flat
  gpuflat compare masters/combined_flat_filter_V.fits demo/sky/trueflat-V.fits
  gpuflat mask --low 'low/*.fits' --high 'high/*.fits' -o bpm.fits --dark mdark.fits
                                             a bad-pixel mask (ccdmask) from flats
  gpuflat run raw/ --overscan BIASSEC --trim TRIMSEC --bias mbias.fits --dark mdark.fits
                                             raw frames, calibrated in the stream
"""


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose unknown options get a 'did you mean' from the options of
    the command they were given to (Python 3.11's argparse has no ``suggest_on_error``),
    said by that command's parser (its usage line, exit 2)."""

    def parse_args(self, args=None, namespace=None):
        args, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self._command_parser(args)
            text = "unrecognized arguments: " + " ".join(extras)
            hints = [command._suggestion(e) for e in extras if e.startswith("-")]
            hints = [h for h in hints if h]
            if hints:
                text += " (" + "; ".join(hints) + ")"
            command.error(text)
        return args

    def _command_parser(self, args):
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                name = getattr(args, action.dest, None)
                if name in action.choices:
                    return action.choices[name]
        return self

    def _suggestion(self, extra) -> str:
        flag = extra.split("=", 1)[0]
        known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        return f"did you mean {close[0]}?" if close else ""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
            help="directories, files, globs or @listfiles (one entry per line, # comments; "
            "relative entries are relative to the current folder, as in IRAF). Combined "
            "masters (COMBINED = T) are never taken as flats",
        )  # fmt: skip
        p.add_argument("-r", "--recursive", action="store_true", help="descend into subdirectories")
        p.add_argument(
            "--imagetyp", action="append", metavar="VALUE",
            help="select frames whose IMAGETYP is exactly VALUE (any case; repeatable). "
            "Default: every IMAGETYP containing 'flat'",
        )  # fmt: skip
        p.add_argument(
            "--imagetyp-key", metavar="KEY",
            help="the keyword that says the frame type (default IMAGETYP; e.g. OBSTYPE)",
        )  # fmt: skip
        p.add_argument(
            "--where", action="append", metavar="KEY=VALUE",
            help="also require a header value (repeatable)",
        )  # fmt: skip
        p.add_argument(
            "--filter-key", metavar="KEY",
            help="the filter keyword (default FILTER; e.g. FILTER1, FILTNAME, INSFLNAM, "
            "FAFLTNM), which groups the flats unless --group-by says otherwise",
        )  # fmt: skip
        p.add_argument(
            "--group-by", metavar="KEY[,KEY]",
            help="header keys that make a group (default: the filter keyword). A key that "
            "no flat has is an error; a flat without a key that others have is left out "
            "with a warning",
        )  # fmt: skip
        p.add_argument(
            "--allow-missing-key", action="store_true",
            help="combine the flats without a group key as a group of their own instead",
        )  # fmt: skip
        p.add_argument(
            "--min-frames", type=_flag(options.positive_int, "an integer >= 1"), metavar="N",
            help="refuse groups of fewer than N frames, before or after QA (default 3: "
            "fewer cannot be sigma-clipped; 1 combines any group)",
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
        help="PNG plots per group (frame levels, the flat, levels before/after scaling; with "
        "--mask-sources or --saturation, the first frame's mask over it)",
    )
    run.add_argument("--report", metavar="FILE.json", help="write a JSON report")
    eng = run.add_argument_group("combination (defaults follow the astropy CCD guide)")
    eng.add_argument(
        "--method", choices=("average", "median", "sum"), help="combine (default average)"
    )
    eng.add_argument("--scale", help="median (default), mean, none, or exptime:KEYWORD")
    eng.add_argument(
        "--clip", choices=("sigma", "ccdclip", "pclip", "none"),
        help="rejection (default sigma; ccdclip: width from the CCD noise model, IRAF's; "
        "pclip: width from the median to a percentile pixel, IRAF's, see --pclip)",
    )  # fmt: skip
    eng.add_argument(
        "--sigma-low", type=float, metavar="N",
        help="clip values below centre - N x width (default 5)",
    )  # fmt: skip
    eng.add_argument(
        "--sigma-high", type=float, metavar="N",
        help="clip values above centre + N x width (default 5)",
    )  # fmt: skip
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
        "--nkeep", type=int, metavar="N",
        help="clipping keeps at least N of a pixel's samples, the nearest the centre "
        "(negative: rejects at most -N; IRAF's nkeep)",
    )  # fmt: skip
    eng.add_argument(
        "--pclip", type=float, metavar="P",
        help="--clip pclip only: the percentile pixel, P below (< 0) or above (> 0) the "
        "median, a fraction of half the frames when between -1 and 1, else a number of "
        "frames; clips at --sigma-low/--sigma-high x its distance from the median "
        "(default -0.5, IRAF's)",
    )  # fmt: skip
    eng.add_argument(
        "--grow", type=float, metavar="R",
        help="a sample the clipping (or --nlow/--nhigh) rejects also rejects its frame's "
        "samples within R pixels, a disk (IRAF's grow: star wings; 0 to 64, default 0: none)",
    )  # fmt: skip
    eng.add_argument(
        "--rdnoise", type=options.number_or_keyword, metavar="KEY|VALUE",
        help="ccdclip: read noise in electrons, a number or each frame's keyword (default 0)",
    )  # fmt: skip
    eng.add_argument(
        "--noise-gain", type=options.number_or_keyword, metavar="KEY|VALUE",
        help="ccdclip: gain in e-/ADU of the data as combined, a number or each frame's "
        "keyword (default 1; not --gain, which calibrates)",
    )  # fmt: skip
    eng.add_argument(
        "--snoise", type=options.number_or_keyword, metavar="KEY|VALUE",
        help="ccdclip: sensitivity noise as a fraction (default 0)",
    )  # fmt: skip
    eng.add_argument(
        "--mask", metavar="FITS", help="bad-pixel mask applied to every frame (nonzero = bad)"
    )
    size = _flag(options.byte_size, "a size in bytes (350e6, 350MB, 2GiB)")
    eng.add_argument(
        "--mem-limit", type=size, metavar="BYTES",
        help="working memory, e.g. 350e6, 350MB or 2GiB (default 350MB)",
    )  # fmt: skip
    eng.add_argument(
        "--device-mem-limit", type=_flag(options.byte_size_or_none, "a size in bytes or 'none'"),
        metavar="BYTES",
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
    cal = run.add_argument_group(
        "calibration of raw frames (as ccdproc.ccd_process; applied band by band as the "
        "frames are read, before the levels and the combine: nothing is written in between)"
    )
    cal.add_argument(
        "--overscan", metavar="SECTION|KEY",
        help="subtract the overscan: a FITS section, 1-based and inclusive, columns first "
        "(e.g. '[2049:2080,:]'), or the header keyword holding it (BIASSEC)",
    )  # fmt: skip
    cal.add_argument(
        "--overscan-axis", type=_flag(options.overscan_axis, "0, 1 or auto"), metavar="0|1|auto",
        help="1 (default): one value per row of the strip; 0: one per column; auto: along "
        "the strip's shorter side",
    )  # fmt: skip
    cal.add_argument(
        "--overscan-model", metavar="median|mean|poly:N",
        help="each line's median (default) or mean, or a degree-N polynomial fitted to the "
        "medians along the strip",
    )  # fmt: skip
    cal.add_argument(
        "--trim", metavar="SECTION|KEY",
        help="keep this part of each frame (a section, or TRIMSEC / DATASEC); the products "
        "have the trimmed shape",
    )  # fmt: skip
    cal.add_argument(
        "--bias", metavar="FITS",
        help="subtract this master bias (trimmed shape; a multi-extension master is matched "
        "by EXTNAME)",
    )  # fmt: skip
    cal.add_argument(
        "--dark", metavar="FITS",
        help="subtract this master dark scaled by exposure time (frame / dark, from "
        "--exposure-key)",
    )  # fmt: skip
    cal.add_argument(
        "--exposure-key", metavar="KEY", help="exposure time keyword (default EXPTIME)"
    )
    cal.add_argument(
        "--gain", type=options.number_or_keyword, metavar="KEY|VALUE",
        help="multiply by the gain (e-/ADU), a number or each frame's header keyword (GAIN), "
        "after the masters are subtracted",
    )  # fmt: skip
    qa = run.add_argument_group(
        "frame QA (on by default; the report lists every frame's level and rejected fraction)"
    )
    qa.add_argument(
        "--level-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
        help="leave out frames whose median level (raw ADU) is outside [LOW, HIGH]: "
        "saturated or too faint twilight flats. Without it, saturated frames are still left "
        "out: a median at or above the header's SATURATE or 95%% of the integer data's full "
        "scale (62258 for unsigned 16-bit; float data: SATURATE only)",
    )  # fmt: skip
    qa.add_argument(
        "--qa-reject-factor", type=float, metavar="F",
        help="leave out frames whose rejected fraction is above 1%%, above F times the "
        "group's median fraction and above that median + 5 sigma of the group's fractions "
        "(groups of 3 or more frames; default 10)",
    )  # fmt: skip
    qa.add_argument(
        "--saturation", metavar="LEVEL|KEYWORD",
        help="saturation level in raw ADU (before calibration), or the header keyword holding "
        "each frame's (SATURATE): pixels at or above it are masked, and a frame with more "
        "than --max-saturated of them is left out",
    )  # fmt: skip
    qa.add_argument(
        "--max-saturated", type=float, metavar="FRACTION",
        help="with --saturation: leave out frames with more than this fraction of their "
        "pixels saturated (default 0.01)",
    )  # fmt: skip
    qa.add_argument(
        "--no-qa", action="store_true", help="leave no frame out (saturated ones neither)"
    )
    sky = run.add_argument_group(
        "sky and twilight flats: source masks (needs the 'sky' extra: pip install 'gpuflat[sky]')"
    )
    sky.add_argument(
        "--mask-sources", action="store_true",
        help="combine a provisional master, find the stars of every frame divided by it, "
        "grow their masks and combine again with every frame's own mask",
    )  # fmt: skip
    sky.add_argument(
        "--source-sigma", type=float, metavar="K",
        help="detection threshold over the local background, in local noise (default 3)",
    )  # fmt: skip
    sky.add_argument(
        "--source-grow", type=float, metavar="R",
        help="grow each source's mask by a disk of R pixels (default 1.5)",
    )  # fmt: skip
    sky.add_argument(
        "--source-npixels", type=_flag(options.positive_int, "an integer >= 1"), metavar="N",
        help="a source is a connected region of at least N pixels (default 2)",
    )  # fmt: skip
    sky.add_argument(
        "--source-iters", type=_flag(options.positive_int, "an integer >= 1"), metavar="N",
        help="rounds of masking and combining again (default 1)",
    )  # fmt: skip
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

    info = sub.add_parser(
        "info", help="version, backends, and whether their compiled kernels are cached here"
    )
    common(info)
    warm = sub.add_parser(
        "warmup",
        help="compile every kernel gpuflat can use, for this machine (image builds, new nodes)",
        description="Compile, for this machine, every kernel specialisation that 'gpuflat "
        "run' and the library can reach (CPU; CUDA where a GPU is present), into numba's "
        "and CuPy's caches (NUMBA_CACHE_DIR, CUPY_CACHE_DIR). Later processes then compile "
        "nothing. Idempotent: a second call takes about a second.",
    )
    common(warm)

    mask_parser(sub, common, _flag)  # gpuflat mask: _cli_mask.py

    sim = sub.add_parser("simulate", help="write a realistic simulated night")
    sim.add_argument("outdir")
    sim.add_argument(
        "--size", default="512x768", metavar="ROWSxCOLS", help="frame size (default 512x768)"
    )
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
    sim.add_argument(
        "--raw", action="store_true",
        help="raw frames: an overscan strip of 32 columns (BIASSEC, TRIMSEC, DATASEC), a "
        "bias level that varies by frame and row, dark current; plus master-bias.fits and "
        "master-dark.fits to calibrate them with",
    )  # fmt: skip
    sky = sim.add_argument_group("a night-sky sequence instead (sky flats)")
    sky.add_argument(
        "--sky", action="store_true",
        help="dithered night-sky frames with stars (IMAGETYP OBJECT, bias and dark "
        "subtracted), plus the true flat they used, trueflat-V.fits (COMBINED = T: never an "
        "input); compare a master with it: gpuflat compare",
    )  # fmt: skip
    sky.add_argument("--n-sky", type=int, default=7, metavar="N", help="sky frames (default 7)")
    sky.add_argument(
        "--cover", type=float, default=0.05, metavar="FRACTION",
        help="fraction of each frame's pixels where stars rise above the sky's noise "
        "(default 0.05; 0: the same night without stars)",
    )  # fmt: skip
    common(sim)

    cmp = sub.add_parser(
        "compare", help="a master flat against a reference (the true flat): RMS, pixels off",
        description="Normalise both flats to a median of 1 and print the RMS of their ratio "
        "and the number of pixels off by more than NSIGMA x sigma, sigma being the ratio's "
        "robust scatter (1.4826 x MAD) unless --sigma gives it (e.g. the robust sigma of a "
        "master made without stars).",
    )  # fmt: skip
    cmp.add_argument("master", metavar="MASTER")
    cmp.add_argument("reference", metavar="REFERENCE")
    cmp.add_argument("--sigma", type=float, metavar="S", help="the expected noise of the ratio")
    cmp.add_argument("--nsigma", type=float, default=5.0, metavar="N", help="default 5")
    cmp.add_argument("--json", metavar="FILE", help="also write the figures as JSON (- : stdout)")
    common(cmp)
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
