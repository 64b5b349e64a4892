"""Side-by-side benchmark: gpuflat vs the guide's ccdproc call, astropy's fast path and the
I/O floor, on simulated nights. One command: ``make bench`` (``--quick`` for a tiny run).

Every contender runs in a fresh subprocess (so peak resident memory is its own), the
contenders alternate within each repeat to cancel drift, and each writes its combined image
so agreement with the astropy reference is measured, not assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORKLOADS = {
    # name: (frames, rows, cols, dtype, mem_limit, detectors)
    "W1": (15, 2048, 2048, "float32", 350e6, 0),
    "W2": (20, 4096, 4096, "uint16", 350e6, 0),
    "W3": (40, 4096, 4096, "float32", 350e6, 0),
    # mosaics: 5 exposures in each of 3 filters, 4 detectors of 1024x1024 each
    "M1": (5, 1024, 1024, "float32", 350e6, 4),
    "tiny": (5, 64, 48, "float32", 350e6, 0),
}
CONTENDERS = ("gpuflat", "gpuflat_run", "ccdproc", "astropy", "io_floor")
MOSAIC_CONTENDERS = ("gpuflat_run", "workers_1", "workers_2")


def make_workload(name, cache: Path) -> list[str]:
    """Flats from ``gpuflat simulate``, cached between runs: twilight flats of one filter, or
    for a mosaic workload dome and twilight flats of three filters."""
    from gpuflat._simulate import simulate_night

    n, rows, cols, dtype, _, mef = WORKLOADS[name]
    d = cache / (f"{name}-{n}x{rows}x{cols}-{dtype}" + (f"-mef{mef}" if mef else ""))
    marker = d / ".complete"
    if not marker.exists():
        paths = simulate_night(
            d, shape=(rows, cols), n_dome=n if mef else 0, n_twilight=n, dtype=dtype, seed=1,
            overwrite=True, mef=mef,
        )  # fmt: skip
        marker.write_text("\n".join(str(p) for p in paths))
    from gpuflat._select import is_selected, read_info

    return [str(p) for p in sorted(d.glob("*.fits")) if is_selected(read_info(p))]


# -- contenders (each runs in its own process) ---------------------------------------------


def run_gpuflat(paths, mem_limit, out):
    import gpuflat

    r = gpuflat.combine(
        paths, mem_limit=mem_limit, backend=os.environ.get("GPUFLAT_BENCH_DEVICE", "cpu")
    )
    np.save(out, r.image.astype(np.float64))


def run_ccdproc(paths, mem_limit, out):
    import ccdproc
    from astropy.stats import mad_std

    def inv_median(a):
        return 1 / np.median(a)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ccd = ccdproc.combine(
            paths, method="average", scale=inv_median, sigma_clip=True,
            sigma_clip_low_thresh=5, sigma_clip_high_thresh=5, sigma_clip_func=np.ma.median,
            sigma_clip_dev_func=mad_std, mem_limit=mem_limit, unit="adu",
        )  # fmt: skip
    np.save(out, np.asarray(ccd.data, np.float64))


def _gpuflat_run(paths, mem_limit, out, *extra):
    """``gpuflat run`` end to end in this process (products written, checksummed, verified);
    the first image of the last product is kept for the agreement check."""
    import tempfile

    from astropy.io import fits

    from gpuflat.cli import main

    device = os.environ.get("GPUFLAT_BENCH_DEVICE", "cpu")
    with tempfile.TemporaryDirectory(prefix="gpuflat-bench-") as d:
        argv = ["run", *paths, "-o", d, "-q", "--device", device, "--mem-limit", str(mem_limit)]
        code = main([*argv, *extra])
        if code:
            raise SystemExit(f"gpuflat run exited with {code}")
        with fits.open(sorted(Path(d).glob("*.fits"))[-1]) as hdul:
            image = next(h.data for h in hdul if h.data is not None)
    np.save(out, image.astype(np.float64))


def run_gpuflat_run(paths, mem_limit, out):
    _gpuflat_run(paths, mem_limit, out)


def run_workers_1(paths, mem_limit, out):
    _gpuflat_run(paths, mem_limit, out, "--workers", "1")


def run_workers_2(paths, mem_limit, out):
    _gpuflat_run(paths, mem_limit, out, "--workers", "2")


def _read_all(paths):
    from astropy.io import fits

    return np.stack([fits.getdata(p).astype(np.float32) for p in paths])


def run_astropy(paths, mem_limit, out):
    from astropy.stats import sigma_clip

    stack = _read_all(paths)
    stack /= np.median(stack.reshape(len(stack), -1), axis=1)[:, None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clipped = sigma_clip(
            stack, sigma=5, cenfunc="median", stdfunc="mad_std", maxiters=1, axis=0
        )
    np.save(out, np.ma.mean(clipped, axis=0).filled(np.nan).astype(np.float64))


def run_io_floor(paths, mem_limit, out):
    for p in paths:  # read every input into a float32 array, one at a time
        _read_all([p])
    np.save(out, np.zeros(1))


def one(contender, workload, cache, out):
    paths = make_workload(workload, Path(cache))
    mem_limit = WORKLOADS[workload][4]
    t0 = time.perf_counter()
    globals()[f"run_{contender}"](paths, mem_limit, out)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss": peak_rss()}))


def peak_rss() -> int:
    """This process's peak resident bytes: VmHWM, which starts afresh at exec (ru_maxrss
    would carry over the parent's peak, the driver's that simulated the workloads)."""
    with open("/proc/self/status") as fh:
        line = next(ln for ln in fh if ln.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


# -- driver --------------------------------------------------------------------------------


def agreement(image, reference):
    both = np.isfinite(image) & np.isfinite(reference)
    rel = np.abs(image[both] - reference[both]) / np.abs(reference[both])
    return float(rel.max()) if rel.size else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workloads", default="W1,W2,W3", help="comma list of " + ",".join(WORKLOADS)
    )
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="tiny workload, one repeat (for tests)"
    )
    parser.add_argument("--cache", default=str(HERE / "cache"))
    parser.add_argument("--json", default=str(HERE / "results" / "latest.json"))
    parser.add_argument(
        "--one", nargs=3, metavar=("CONTENDER", "WORKLOAD", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.one:
        return one(args.one[0], args.one[1], args.cache, args.one[2])
    workloads = ["tiny"] if args.quick else args.workloads.split(",")
    repeats = 1 if args.quick else args.repeats
    results = {"machine": machine_facts(), "workloads": {}}
    out_dir = Path(args.cache) / "outputs"
    out_dir.mkdir(parents=True, exist_ok=True)
    for w in workloads:
        paths = make_workload(w, Path(args.cache))
        _, rows, cols, dtype, mem_limit, mef = WORKLOADS[w]
        contenders = list(MOSAIC_CONTENDERS) if mef else args.contenders.split(",")
        times = {c: [] for c in contenders}
        rss = {c: 0 for c in contenders}
        for _ in range(repeats):
            for c in contenders:  # alternate contenders within a repeat
                cmd = [
                    sys.executable,
                    __file__,
                    "--cache",
                    args.cache,
                    "--one",
                    c,
                    w,
                    str(out_dir / f"{w}-{c}.npy"),
                ]
                rec = json.loads(
                    subprocess.run(
                        cmd, check=True, capture_output=True, text=True
                    ).stdout.splitlines()[-1]
                )
                times[c].append(rec["seconds"])
                rss[c] = max(rss[c], rec["peak_rss"])
        pixels = len(paths) * (mef or 1) * rows * cols  # input pixels, all files and detectors
        ref = np.load(out_dir / f"{w}-astropy.npy") if "astropy" in contenders else None
        base = statistics.median(times[contenders[0]])
        rows_out = {}
        for c in contenders:
            t = statistics.median(times[c])
            entry = {
                "median_s": round(t, 4),
                "ratio": round(t / base, 2),
                "mpix_per_s": round(pixels / t / 1e6, 1),
                "peak_rss_mb": round(rss[c] / 1e6, 1),
            }
            if ref is not None and c not in ("io_floor",):
                entry["max_rel_diff_vs_astropy"] = agreement(np.load(out_dir / f"{w}-{c}.npy"), ref)
            rows_out[c] = entry
        results["workloads"][w] = {
            "files": len(paths),
            "detectors": mef or 1,
            "shape": [rows, cols],
            "dtype": dtype,
            "mem_limit": mem_limit,
            "baseline": contenders[0],  # "ratio" is time / this contender's time
            "results": rows_out,
        }
        print_table(w, results["workloads"][w])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\nresults: {args.json}")
    return 0


def print_table(name, data):
    n, (rows, cols) = data["files"], data["shape"]
    what = f"{n} files x {data['detectors']} detectors" if data["detectors"] > 1 else f"{n}"
    print(
        f"\n{name}: {what} x {rows}x{cols} {data['dtype']}, "
        f"mem_limit {data['mem_limit'] / 1e6:.0f} MB"
    )
    head = ("contender", "median s", f"x {data['baseline']}", "Mpix/s", "peak MB", "max rel diff")
    print("{:<12} {:>9} {:>12} {:>8} {:>8} {:>13}".format(*head))
    for c, e in data["results"].items():
        diff = e.get("max_rel_diff_vs_astropy")
        diff = "" if diff is None else f"{diff:.2e}"
        print(
            f"{c:<12} {e['median_s']:>9.3f} {e['ratio']:>12.2f} {e['mpix_per_s']:>8.1f} "
            f"{e['peak_rss_mb']:>8.0f} {diff:>13}"
        )


def machine_facts():
    import astropy
    import numba

    import gpuflat

    facts = {
        "cpus": os.cpu_count(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "astropy": astropy.__version__,
        "gpuflat": gpuflat.__version__,
    }
    try:
        import ccdproc

        facts["ccdproc"] = ccdproc.__version__
    except ImportError:
        pass
    return facts


if __name__ == "__main__":
    sys.exit(main())
