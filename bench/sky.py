"""Sky flats: the master with source masks against the plain one and the starless night.

    python bench/sky.py                        # 5, 10 and 15 frames of 1024^2, 3 repeats
    python bench/sky.py --frames 5 --size 512 --repeats 1

For every number of frames, ``gpuflat simulate --sky`` writes the same dithered night twice,
with stars (``--cover``, 5% of each frame by default) and without; then, in fresh processes
timed from outside (``bench.py``'s ``timed``), the contenders alternating:

* ``starless``: ``gpuflat run --imagetyp OBJECT`` on the night without stars;
* ``plain``: the same on the night with stars;
* ``masked``: the same with ``--mask-sources``.

Each master is compared with the simulation's true flat (``gpuflat.compare_flats``): the
pixels off by more than 5 sigma, sigma being the robust scatter of the starless master
around the truth (the issue's yardstick), and (``off_5_expected``) by more than 5 times each
pixel's own expected noise, sigma x sqrt(N / NCOMBINE). The floor of a masked master:
the starless night combined with the masks found on the night with stars (in-process), its
pixels off the truth there only because the masks took samples. What no source mask can
beat: the night with stars combined with perfect masks, the pixels where the simulation's
own noise-free star light exceeds T times a frame's sky noise, for several T (lower T
masks more light and takes more samples; the best count is reported). Also timed in-process
(``gpuflat.combine``, the library, medians of the repeats), where the start-up of a process
does not hide the mask pass. Printed, and written to ``bench/results/sky.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench

HERE = Path(__file__).parent
CONTENDERS = ("starless", "plain", "masked")


def command(directory, out, masked) -> bench.Command:
    exe = Path(sys.executable).with_name("gpuflat")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "gpuflat"]
    argv += ["run", str(directory), "--imagetyp", "OBJECT", "-o", str(out), "-q", "--overwrite",
             "--device", bench.DEVICE]  # fmt: skip
    if masked:
        argv.append("--mask-sources")
    return bench.Command(argv)


def night(root: Path, n, size, cover, seed) -> dict:
    from gpuflat._skysim import simulate_sky

    dirs = {}
    for name, c in (("starless", 0.0), ("stars", cover)):
        d = root / f"sky-{n}x{size}-{name}-s{seed}"
        if not (d / "trueflat-V.fits").exists():
            simulate_sky(d, shape=(size, size), n_frames=n, cover=c, seed=seed, overwrite=True)
        dirs[name] = d
    return dirs


def in_process(directory, masked, repeats) -> float:
    import gpuflat

    frames = sorted(str(p) for p in Path(directory).glob("sky-*.fits"))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gpuflat.combine(frames, backend=bench.DEVICE, mask_sources=masked)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def starless_with_the_masks(dirs, truth, sigma) -> dict:
    """The floor of a source-masked master: the starless night combined with the masks the
    mask pass finds on the night with stars (the same frames but for the stars), compared
    with the truth. Every pixel it has off is there because masks took samples away, not
    because of stars: no mask of those sizes can do better."""
    import numpy as np
    from astropy.nddata import CCDData

    import gpuflat

    stars = sorted(str(p) for p in Path(dirs["stars"]).glob("sky-*.fits"))
    found = gpuflat.combine(stars, backend=bench.DEVICE, mask_sources=True).source_masks
    plain = sorted(Path(dirs["starless"]).glob("sky-*.fits"))
    ccds = [CCDData.read(p, unit="adu") for p in plain]
    for i, ccd in enumerate(ccds):
        ccd.mask = found.mask(i).astype(bool)
    result = gpuflat.combine(ccds, backend=bench.DEVICE)
    return gpuflat.compare_flats(result.image.astype(np.float64), truth, sigma=sigma,
                                 count=result.count)  # fmt: skip


#: thresholds of the perfect masks (star light over the frame's sky noise)
ORACLE_LEVELS = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0)


def perfect_masks(dirs, n, size, cover, seed, truth, sigma) -> dict:
    """What no source mask can beat: the night with stars combined with masks made from
    the simulation's own star light (every pixel where a frame's noise-free star light
    exceeds T times its sky noise; no detection, no grow), for each T of
    ``ORACLE_LEVELS``, compared with the truth. Lower T masks more star light and takes
    more samples."""
    import numpy as np
    from astropy.nddata import CCDData

    import gpuflat
    from gpuflat._skysim import star_light

    stars = sorted(Path(dirs["stars"]).glob("sky-*.fits"))
    lights = list(star_light((size, size), n_frames=n, cover=cover, seed=seed))
    ccds = [CCDData.read(p, unit="adu") for p in stars]
    out = {}
    for level in ORACLE_LEVELS:
        for ccd, light in zip(ccds, lights, strict=True):
            ccd.mask = light > level
        result = gpuflat.combine(ccds, backend=bench.DEVICE)
        figures = gpuflat.compare_flats(result.image.astype(np.float64), truth, sigma=sigma,
                                        count=result.count)  # fmt: skip
        fraction = float(np.mean([c.mask.mean() for c in ccds]))
        out[str(level)] = {"off": figures["off"], "masked_fraction": fraction}
    return out


def figure(path, root, n, truth, sigma, entry) -> None:
    """Where the masters are off the truth by more than 5 sigma: the plain one, the masked
    one and the starless night's, each such pixel a dot (drawn 3 pixels wide)."""
    import numpy as np
    from astropy.io import fits
    from matplotlib.figure import Figure

    from gpuflat._sources import grow

    t = fits.getdata(truth).astype(np.float64)
    fig = Figure(figsize=(12, 4.4), dpi=72, layout="constrained")
    titles = {"plain": "gpuflat run", "masked": "gpuflat run --mask-sources",
              "starless": "the same night without stars"}  # fmt: skip
    for k, c in enumerate(("plain", "masked", "starless")):
        m = fits.getdata(root / f"out-{n}-{c}" / "combined_flat_filter_V.fits").astype(np.float64)
        ratio = (m / np.nanmedian(m)) / (t / np.median(t))
        ratio /= np.nanmedian(ratio)
        off = grow(np.abs(ratio - 1) > 5 * sigma, 1.5)
        ax = fig.add_subplot(1, 3, k + 1)
        ax.imshow(off, origin="lower", cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{titles[c]}: {entry['off_5sigma'][c]} pixels", fontsize="medium")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"pixels off the true flat by more than 5 sigma: a simulated dithered sky night, {n} "
        f"frames of {t.shape[0]}x{t.shape[1]}, stars on 5% of each"
    )
    fig.savefig(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[5, 10, 15])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--cover", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(HERE / "results" / "sky.json"))
    parser.add_argument(
        "--figure", metavar="PNG",
        help="also draw the first night's masters divided by the truth, plain and masked",
    )  # fmt: skip
    args = parser.parse_args(argv)
    import gpuflat

    root = HERE / "cache" / "sky"
    root.mkdir(parents=True, exist_ok=True)
    results = {"machine": bench.machine_facts(), "size": args.size, "cover": args.cover,
               "device": bench.DEVICE, "nights": {}}  # fmt: skip
    for n in args.frames:
        dirs = night(root, n, args.size, args.cover, args.seed)
        source = {"starless": dirs["starless"], "plain": dirs["stars"], "masked": dirs["stars"]}
        times = {c: [] for c in CONTENDERS}
        for k in range(args.repeats):
            order = CONTENDERS if k % 2 == 0 else CONTENDERS[::-1]
            for c in order:
                out = root / f"out-{n}-{c}"
                out.mkdir(exist_ok=True)
                seconds, _ = bench.timed(command(source[c], out, c == "masked"), out)
                times[c].append(seconds)
        truth = str(dirs["stars"] / "trueflat-V.fits")
        product = "combined_flat_filter_V.fits"
        starless = gpuflat.compare_flats(str(root / f"out-{n}-starless" / product), truth)
        sigma = starless["robust_sigma"]
        figures = {
            c: gpuflat.compare_flats(str(root / f"out-{n}-{c}" / product), truth, sigma=sigma)
            for c in CONTENDERS
        }
        floor = starless_with_the_masks(dirs, truth, sigma)
        perfect = perfect_masks(dirs, n, args.size, args.cover, args.seed, truth, sigma)
        median = {c: statistics.median(v) for c, v in times.items()}
        library = {
            c: in_process(source[c], c == "masked", args.repeats) for c in ("plain", "masked")
        }
        entry = {
            "frames": n,
            "sigma": sigma,
            "off_5sigma": {c: figures[c]["off"] for c in CONTENDERS},
            "off_5_expected": {c: figures[c]["off_expected"] for c in CONTENDERS},
            "rms": {c: figures[c]["rms"] for c in CONTENDERS},
            "seconds": median,
            "seconds_all": times,
            "masked_over_plain": median["masked"] / median["plain"],
            "in_process_seconds": library,
            "in_process_masked_over_plain": library["masked"] / library["plain"],
            "masked_over_starless_off": figures["masked"]["off"]
            / max(1, figures["starless"]["off"]),
            # the starless night with the masked run's masks: the floor of a masked master
            "starless_with_masks_off": floor["off"],
            "starless_with_masks_off_expected": floor["off_expected"],
            # the night with stars and perfect masks (the simulation's star light above T)
            "perfect_masks_off": perfect,
            "perfect_masks_best_off": min(v["off"] for v in perfect.values()),
        }
        results["nights"][str(n)] = entry
        if args.figure and n == args.frames[0]:
            figure(args.figure, root, n, truth, sigma, entry)
        off = entry["off_5sigma"]
        print(
            f"{n:2d} x {args.size}^2: pixels off > 5 sigma: starless {off['starless']}, "
            f"plain {off['plain']}, masked {off['masked']} "
            f"(masked / starless {entry['masked_over_starless_off']:.2f}; the starless "
            f"night with the same masks {floor['off']}; perfect masks at best "
            f"{entry['perfect_masks_best_off']}; against each "
            f"pixel's expected noise: {entry['off_5_expected']}); "
            f"fresh process: plain {median['plain']:.2f} s, masked {median['masked']:.2f} s "
            f"({entry['masked_over_plain']:.2f}x); in-process: plain {library['plain']:.3f} s, "
            f"masked {library['masked']:.3f} s ({entry['in_process_masked_over_plain']:.2f}x)",
            flush=True,
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\nresults: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
