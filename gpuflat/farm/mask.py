"""``gpuflat mask``: a bad-pixel mask product from flats, the astropy CCD guide's recipe
("Identifying bad pixels with ccdmask"): ccdmask on the ratio of a low and a high flat
(masters, or groups of frames combined here through the library), ORed with the hot pixels
of a master dark (dark current above a threshold in e-/s). Mosaics are masked extension
by extension, matched by EXTNAME.

Everything is checked before any work (inputs exist and match, parameters are valid, the
output may be written): a refusal is an :class:`OptionError` (one line, exit code 2) and
writes nothing. The product is written atomically and verified
(:func:`gpuflat._badpix.write_mask`).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import _badpix
from .._extensions import image_extensions, parse_ext_list, select_extensions
from .._frames import FitsFrame, ext_label
from .._select import expand_inputs
from ..errors import GpuflatError
from .options import OptionError

log = logging.getLogger("gpuflat")

_PARAMS = ("ncmed", "nlmed", "ncsig", "nlsig", "lsigma", "hsigma", "ngood", "findbadcolumns")


@dataclass(frozen=True)
class MaskOptions:
    """``gpuflat mask``'s options, validated once (:func:`options_from_args`)."""

    output: Path
    params: _badpix.MaskParams
    ratio: Path | None = None
    low: tuple[Path, ...] = ()
    high: tuple[Path, ...] = ()
    dark: Path | None = None
    hot_threshold: float = 4.0
    gain: float | str = "GAIN"
    exposure_key: str = "EXPTIME"
    ext: tuple | None = None
    mem_limit: float = 350e6
    overwrite: bool = False
    plots: bool = False
    quiet: bool = False


def options_from_args(args) -> MaskOptions:
    """The options from the parsed command line; an :class:`OptionError` for anything
    wrong, before any work."""
    given = {k: getattr(args, k) for k in _PARAMS if getattr(args, k, None) is not None}
    try:
        params = _badpix.MaskParams(**given)
    except (ValueError, TypeError) as exc:
        raise OptionError(f"--{str(exc).lstrip('-')}") from None
    if args.ratio is None and not (args.low and args.high):
        raise OptionError("give --ratio RATIO.fits, or --low and --high (flats of two levels)")
    if args.ratio is not None and (args.low or args.high):
        raise OptionError("give --ratio or --low/--high, not both")
    if args.hot_threshold is not None and args.dark is None:
        raise OptionError("--hot-threshold needs --dark")
    threshold = 4.0 if args.hot_threshold is None else args.hot_threshold
    if not np.isfinite(threshold):
        raise OptionError(f"--hot-threshold {threshold}: expected a finite number of e-/s")
    if args.mem_limit is not None and not args.mem_limit > 0:
        raise OptionError(f"--mem-limit {args.mem_limit:g}: expected a positive number of bytes")
    gain = args.gain or "GAIN"
    try:
        gain = float(gain)
        if not (np.isfinite(gain) and gain > 0):
            raise OptionError(f"--gain {args.gain}: expected a positive number or a keyword")
    except ValueError:
        pass  # a header keyword
    try:
        ext = parse_ext_list(args.ext, param="--ext")
    except (ValueError, TypeError) as exc:
        raise OptionError(str(exc)) from None
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise OptionError(f"{output}: exists (use --overwrite to replace it)")
    if not output.parent.is_dir():
        raise OptionError(f"{output}: the folder {output.parent} does not exist")
    ratio = _one_file("--ratio", args.ratio) if args.ratio is not None else None
    low = _files("--low", args.low or ())
    high = _files("--high", args.high or ())
    dark = _one_file("--dark", args.dark) if args.dark is not None else None
    for name, paths in (("--ratio", [ratio]), ("--low", low), ("--high", high), ("--dark", [dark])):
        if any(p is not None and os.path.realpath(p) == os.path.realpath(output) for p in paths):
            raise OptionError(f"{name} {output}: is the output")
    return MaskOptions(
        output=output, params=params, ratio=ratio, low=low, high=high, dark=dark,
        hot_threshold=threshold, gain=gain, exposure_key=args.exposure_key or "EXPTIME",
        ext=ext, mem_limit=350e6 if args.mem_limit is None else args.mem_limit,
        overwrite=args.overwrite, plots=args.plots, quiet=args.quiet,
    )  # fmt: skip


def _one_file(flag, item) -> Path:
    paths = _files(flag, [item])
    if len(paths) != 1:
        raise OptionError(f"{flag} {item}: expected one file, found {len(paths)}")
    return paths[0]


def _files(flag, items) -> tuple[Path, ...]:
    paths, missing = expand_inputs(list(items))
    if missing:
        raise OptionError(f"{flag} {missing[0]}")
    if items and not paths:
        raise OptionError(f"{flag} {' '.join(items)}: no FITS file found")
    return tuple(paths)


def main(args, argv=None) -> int:
    """The command: options, plan, mask, product; returns the exit code."""
    opts = options_from_args(args)
    summary = make_mask(opts)
    if not opts.quiet:
        bad, total = summary["masked"], summary["pixels"]
        hot = f", {summary['hot']} hot in the dark" if opts.dark else ""
        print(f"{opts.output}  ({bad} of {total} pixels masked, {100 * bad / total:.3g}%{hot})")
    return 0


#: About how long the first compile of ccdmask's kernels takes (2 cores), for the notice
FIRST_COMPILE_SECONDS = 6


def make_mask(opts: MaskOptions) -> dict:
    """Plan (every input read by its headers, extensions matched, shapes checked: input
    problems are :class:`OptionError`), then mask each extension and write the product.
    Says once, on stderr (unless quiet), when numba compiles the kernels first."""
    try:
        plan = _plan(opts)
    except GpuflatError as exc:
        raise OptionError(str(exc)) from None
    from ..backends import _compile

    def say():
        if not opts.quiet:
            print(f"gpuflat: compiling the bad-pixel mask kernels for this machine, once "
                  f"(numba's cache does not have them yet); about {FIRST_COMPILE_SECONDS} s "
                  f"on 2 cores. Cache: {_compile.cache_dir()}. 'gpuflat warmup' compiles "
                  "every kernel ahead.", file=sys.stderr, flush=True)  # fmt: skip

    with _compile.first_compile(say):
        return _make(opts, plan)


def _make(opts, plan) -> dict:
    planes, counts = [], {"masked": 0, "pixels": 0, "hot": 0, "ccdmask": 0}
    header_notes = {}
    for key, hdus, _shape in plan:
        ratio, where = _ratio(opts, key, hdus)
        mask = _badpix.compute_mask(ratio, opts.params, mem_limit=opts.mem_limit, hdu=where)
        counts["ccdmask"] += int(np.count_nonzero(mask))
        hot = None
        if opts.dark is not None:
            dark, exptime, gain = _dark(opts, hdus["dark"])
            hot = _badpix.hot_pixels(dark, threshold=opts.hot_threshold, exptime=exptime,
                                     gain=gain)  # fmt: skip
            counts["hot"] += int(np.count_nonzero(hot))
            header_notes.update(DARKEXP=(exptime, "dark exposure time (s)"),
                                DARKGAIN=(gain, "dark gain (e-/ADU)"))  # fmt: skip
            mask = _badpix.combine_masks(mask, hot)
        counts["masked"] += int(np.count_nonzero(mask))
        counts["pixels"] += mask.size
        planes.append((key, mask, None if key is None else _ext_header(key)))
        if opts.plots:
            _plot(opts, key, ratio if where is None else _read(ratio, where), mask)
    header_notes.update(
        NBADPIX=(counts["ccdmask"], "pixels ccdmask found bad"),
        NMASKED=(counts["masked"], "pixels masked"),
    )
    if opts.dark is not None:
        header_notes.update(HOTTHRES=(opts.hot_threshold, "hot pixels: dark current > (e-/s)"),
                            NHOTPIX=(counts["hot"], "hot pixels in the dark"))  # fmt: skip
    inputs = {"RATIO": opts.ratio} if opts.ratio else {"LOWFLAT": opts.low, "HIGHFLAT": opts.high}
    if opts.dark is not None:
        inputs["DARK"] = opts.dark
    header = _badpix.mask_header(inputs=inputs, params=opts.params, notes=header_notes)
    _badpix.write_mask(opts.output, header, planes, overwrite=opts.overwrite)
    return counts


def _plan(opts):
    """``[(key, {role: [HDU index per file]}, shape)]``: one entry per extension (key
    (EXTNAME, EXTVER)), or one with key None for single images."""
    roles = {"ratio": [opts.ratio]} if opts.ratio else {"low": opts.low, "high": opts.high}
    if opts.dark is not None:
        roles["dark"] = [opts.dark]
    first = next(iter(roles.values()))[0]
    available = image_extensions(first)
    if not available:
        raise OptionError(f"{first}: no 2-D image in the file")
    mosaic = len(available) > 1
    if not mosaic:
        shape = available[0][2]
        entries = [(None, {}, shape)]
    else:
        chosen = select_extensions(first, available, opts.ext)
        entries = [(key, {}, shape) for key, _, shape in chosen]
    for role, paths in roles.items():
        for path in paths:
            exts = image_extensions(path)
            by_key = {k: (i, s) for k, i, s in exts}
            for key, hdus, shape in entries:
                if key is None:
                    if not exts:
                        raise OptionError(f"{path}: no 2-D image in the file")
                    index, other = exts[0][1], exts[0][2]
                elif key in by_key:
                    index, other = by_key[key]
                else:
                    raise OptionError(f"{path}: no extension {ext_label(key)} ({first} has it)")
                if other != shape:
                    where = "" if key is None else f" (extension {ext_label(key)})"
                    raise OptionError(
                        f"{path}: {other[0]}x{other[1]}{where}, but {first} is "
                        f"{shape[0]}x{shape[1]}: the inputs must have one shape"
                    )
                hdus.setdefault(role, []).append(index)
    for _, _, shape in entries:  # the working memory: checked before any work
        try:
            _badpix.plan_rows(shape, np.float64, opts.params, opts.mem_limit, inline=False)
        except ValueError as exc:
            raise OptionError(f"--mem-limit: {exc}") from None
    if opts.dark is not None:  # exposure time and gain: checked before any work
        for _, hdus, _ in entries:
            _dark(opts, hdus["dark"], header_only=True)
    return entries


def _ratio(opts, key, hdus):
    """The image to mask and the HDU to read it from (a file streamed in bands), or the
    ratio low / high in memory (None)."""
    if opts.ratio is not None:
        return opts.ratio, hdus["ratio"][0]
    low = _level_image(opts.low, hdus["low"], key, opts)
    high = _level_image(opts.high, hdus["high"], key, opts)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(low, high, dtype=np.float32), None


def _level_image(paths, indices, key, opts):
    """One flat: the file itself (a master), or the frames combined by the library (the
    guide's combination: 1/median scaling, 5-sigma MAD clipping, average)."""
    if len(paths) == 1:
        return _read(paths[0], indices[0]).astype(np.float32, copy=False)
    from ..api import combine

    ext = None if key is None else key
    result = combine([str(p) for p in paths], ext=ext, mem_limit=opts.mem_limit)
    return np.asarray(result.image, np.float32)


def _read(path, index):
    frame = FitsFrame(path, hdu=index)
    try:
        out = np.empty(frame.shape, _badpix._file_dtype(frame.header))
        frame.read_rows(0, frame.shape[0], out)
        return out
    finally:
        frame.close()


def _dark(opts, indices, *, header_only=False):
    """The dark's data (unless ``header_only``), exposure time and gain."""
    frame = FitsFrame(opts.dark, hdu=indices[0])
    try:
        header = frame.header
        exptime = header.get(opts.exposure_key)
        if not isinstance(exptime, (int, float)) or isinstance(exptime, bool) or exptime <= 0:
            raise OptionError(
                f"{opts.dark}: no positive exposure time in {opts.exposure_key} "
                f"(got {exptime!r}; --exposure-key names another keyword)"
            )
        gain = opts.gain
        if isinstance(gain, str):
            value = header.get(gain)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise OptionError(
                    f"{opts.dark}: no positive gain in {gain} (got {value!r}); give --gain "
                    "E_PER_ADU (1 for a dark in electrons)"
                )
            gain = value
        if header_only:
            return None, float(exptime), float(gain)
        data = np.empty(frame.shape, np.float64)
        frame.read_rows(0, frame.shape[0], data)
        return data, float(exptime), float(gain)
    finally:
        frame.close()


def _ext_header(key):
    from astropy.io import fits

    return fits.Header([("INHERIT", True, "the primary header's keywords apply")])


def _plot(opts, key, ratio, mask):
    from .._plots import plot_mask

    stem = opts.output.name.removesuffix(".fits").removesuffix(".fit")
    suffix = "" if key is None else f"_{ext_label(key)}"
    path = opts.output.with_name(f"{stem}{suffix}_mask.png")
    title = f"{opts.output.name}{'' if key is None else ' ' + ext_label(key)}"
    plot_mask(path, ratio, mask, lsigma=opts.params.lsigma, hsigma=opts.params.hsigma,
              title=title)  # fmt: skip
