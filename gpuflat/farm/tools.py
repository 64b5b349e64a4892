"""The small verbs of the ``gpuflat`` command beside ``run``: ``simulate`` (a night, or a
night-sky sequence with ``--sky``) and ``compare`` (a master against a reference flat).
Each takes the parsed arguments and returns the lines the command prints; a bad value is
an :class:`OptionError` (exit 2), anything else a one-line error from the command."""

from __future__ import annotations

import json

from .options import OptionError


def simulate(args) -> list[str]:
    """``gpuflat simulate OUTDIR [--sky]``."""
    try:
        rows, cols = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise OptionError(f"--size {args.size!r}: expected ROWSxCOLS, e.g. 512x768") from None
    if rows < 16 or cols < 16:
        raise OptionError(f"--size {args.size}: at least 16x16")
    if args.mef < 0:
        raise OptionError(f"--mef {args.mef}: expected a number of extensions >= 0")
    if args.sky:
        from .._skysim import simulate_sky

        if args.mef or args.raw or args.dtype != "float32":
            raise OptionError("--sky writes float32 single images: no --mef, --raw or --dtype")
        if not 0 <= args.cover <= 0.3:
            raise OptionError(f"--cover {args.cover}: expected a fraction from 0 to 0.3")
        if args.n_sky < 1:
            raise OptionError(f"--n-sky {args.n_sky}: expected a number of frames >= 1")
        paths = simulate_sky(
            args.outdir, shape=(rows, cols), n_frames=args.n_sky, cover=args.cover,
            seed=args.seed, overwrite=args.overwrite,
        )  # fmt: skip
        what = f"{len(paths) - 1} sky frames (IMAGETYP OBJECT) and the true flat {paths[-1].name}"
        return [] if args.quiet else [f"wrote {what} to {args.outdir}"]
    from .._simulate import simulate_night

    paths = simulate_night(
        args.outdir, shape=(rows, cols), n_dome=args.n_dome, n_twilight=args.n_twilight,
        dtype=args.dtype, seed=args.seed, overwrite=args.overwrite, mef=args.mef, raw=args.raw,
    )  # fmt: skip
    return [] if args.quiet else [f"wrote {len(paths)} files to {args.outdir}"]


def compare(args) -> list[str]:
    """``gpuflat compare MASTER REFERENCE [--sigma S] [--nsigma N] [--json FILE|-]``."""
    from .._compare import compare_flats

    if args.sigma is not None and not args.sigma > 0:
        raise OptionError(f"--sigma {args.sigma:g}: expected a positive number")
    if not args.nsigma > 0:
        raise OptionError(f"--nsigma {args.nsigma:g}: expected a positive number")
    figures = compare_flats(args.master, args.reference, sigma=args.sigma, nsigma=args.nsigma)
    figures = {"master": args.master, "reference": args.reference, **figures}
    text = json.dumps(figures, indent=2) + "\n"
    if args.json == "-":
        return [text.rstrip("\n")]
    if args.json:
        from .._atomic import commit

        def write(path):
            with open(path, "w") as fh:
                fh.write(text)

        commit(args.json, write, overwrite=True)
    if args.quiet:
        return []
    return [
        f"{args.master} vs {args.reference}: {figures['pixels']} pixels, RMS of the ratio "
        f"{figures['rms']:.4g}, robust sigma {figures['robust_sigma']:.4g}",
        f"  {figures['off']} pixels off by more than {figures['nsigma']:g} x sigma "
        f"({figures['sigma']:.4g}, {figures['sigma_from']}); the largest "
        f"{figures['max_deviation']:.3g} sigma"
        + (
            f"; {figures['off_expected']} by more than {figures['nsigma']:g} x their own "
            "expected noise (sigma x sqrt(N / NCOMBINE))"
            if "off_expected" in figures
            else ""
        ),
    ]
