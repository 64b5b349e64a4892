"""The argument parser of ``gpuflat mask`` (part of the command line: imported by
:mod:`gpuflat._cli_parser` only). Its flags have no defaults: they are
:class:`gpuflat._badpix.MaskParams`' and :class:`gpuflat.farm.mask.MaskOptions`'."""

from __future__ import annotations

import argparse

from .farm import options

MASK_EXAMPLES = """examples:
  gpuflat mask --ratio ratio.fits -o bpm.fits
  gpuflat mask --low flat_low.fits --high flat_high.fits -o bpm.fits --plots
  gpuflat mask --low 'low/*.fits' --high 'high/*.fits' -o bpm.fits   frames combined first
  gpuflat mask --ratio ratio.fits -o bpm.fits --dark mdark.fits --hot-threshold 4
  gpuflat run night1/ --mask bpm.fits                         then combine with the mask
"""


def mask_parser(sub, common, flag):
    """``gpuflat mask``: IRAF's and ccdproc's parameter names; defaults ccdproc's (kept in
    gpuflat._badpix.MaskParams: the flags here have none)."""
    p = sub.add_parser(
        "mask", help="a bad-pixel mask from flats (ccdmask), optionally with a dark's hot pixels",
        description="Make a bad-pixel mask (uint8, 0 = good, 1 = bad) the way the astropy "
        "CCD guide does: ccdproc.ccdmask (IRAF's ccdmask), pixel for pixel, on the ratio of "
        "a low and a high flat, ORed with the hot pixels of a master dark. Mosaics are "
        "masked extension by extension (matched by EXTNAME). Use it with gpuflat run --mask.",
        epilog=MASK_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    src = p.add_argument_group("input: a ratio, or a low and a high flat")
    src.add_argument("--ratio", metavar="FITS", help="the ratio of two flats to mask")
    src.add_argument(
        "--low", nargs="+", metavar="INPUT",
        help="the low-level flat: a master (one file), or frames (files, globs, folders, "
        "@lists) combined here as gpuflat run combines them; the ratio is low / high",
    )  # fmt: skip
    src.add_argument("--high", nargs="+", metavar="INPUT", help="the high-level flat (as --low)")
    p.add_argument("-o", "--output", required=True, metavar="FITS", help="the mask to write")
    cm = p.add_argument_group("ccdmask (ccdproc's and IRAF's names, ccdproc's defaults)")
    integer, number = flag(int, "an integer"), flag(float, "a number")
    for name, kind, help_text in (
        ("ncmed", "int", "columns of the moving median (default 7)"),
        ("nlmed", "int", "lines of the moving median (default 7)"),
        ("ncsig", "int", "columns of the sigma window (default 15)"),
        ("nlsig", "int", "lines of the sigma window (default 15)"),
        ("lsigma", "float", "low clipping sigma (default 9; IRAF's is 6)"),
        ("hsigma", "float", "high clipping sigma (default 9; IRAF's is 6)"),
        ("ngood", "int", "findbadcolumns: gaps of at most N good lines are masked (default 5)"),
    ):
        cm.add_argument(
            f"--{name}", type=integer if kind == "int" else number, metavar="N",
            help=help_text,
        )  # fmt: skip
    cm.add_argument(
        "--findbadcolumns", action="store_true", default=None,
        help="also mask short runs of good lines between bad ones in a column",
    )  # fmt: skip
    hot = p.add_argument_group("hot pixels from a master dark (the guide's dark-current cut)")
    hot.add_argument("--dark", metavar="FITS", help="mask its pixels whose dark current is high")
    hot.add_argument(
        "--hot-threshold", type=flag(float, "a number of e-/s"), metavar="E_PER_S",
        help="dark current (dark x gain / exposure time) above which a pixel is hot (default "
        "4 e-/s, the guide's)",
    )  # fmt: skip
    hot.add_argument(
        "--gain", metavar="KEY|VALUE",
        help="the dark's gain in e-/ADU, a number or its header keyword (default GAIN)",
    )  # fmt: skip
    hot.add_argument(
        "--exposure-key", metavar="KEY", help="exposure time keyword (default EXPTIME)"
    )
    p.add_argument(
        "--ext", metavar="NAME[,NAME...]",
        help="mosaics: mask only these extensions, by EXTNAME (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--mem-limit", type=flag(options.byte_size, "a size in bytes (350e6, 350MB, 2GiB)"),
        metavar="BYTES",
        help="working memory, e.g. 350e6, 350MB or 2GiB (default 350MB; the mask itself, a "
        "byte per pixel, is not counted)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing mask")
    p.add_argument(
        "--plots", action="store_true",
        help="a PNG beside the mask: the ratio with the masked pixels marked, and its "
        "histogram with the clipping bounds",
    )  # fmt: skip
    common(p)
