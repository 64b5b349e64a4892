"""``gpuflat mask`` against ``ccdproc.ccdmask`` (issue 27), side by side in one run.

    python bench/mask.py                    # 2048^2, 3 repeats of each
    python bench/mask.py --size 1024 --repeat 5

Two comparisons, the contenders alternating, medians reported:

* fresh processes, timed from outside (``bench.py``'s ``timed``): ``gpuflat mask --ratio
  RATIO -o MASK`` against a process that reads the ratio (``CCDData.read``), runs
  ``ccdproc.ccdmask`` and writes the mask as the guide does (uint8 ``CCDData.write``); and
  IRAF's ``ccdmask`` (noao.imred.ccdred; its .pl mask copied to FITS) when ``irafcl`` is
  there (the pixels where IRAF's mask differs from ccdproc's are counted, not refused);
  and the floor: a process with gpuflat mask's components and no masking
  (``FLOOR_SCRIPT``), the most any numba and astropy tool could gain in a fresh process;
* in memory, in this process: ``gpuflat.ccdmask(array)`` against ``ccdproc.ccdmask`` on
  the same array (gpuflat's kernels compiled and warm first).

The ratio is a 1 +- 1% noise field with a bad column, a partial warm column, a cluster and
scattered hot and dead pixels; every mask written or returned is checked to be ccdproc's.
Targets (the issue's): fresh >= 50x, in memory >= 300x. Written to
``bench/results/mask.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench

HERE = Path(__file__).parent

CCDPROC_SCRIPT = """
import sys
import numpy as np
from astropy import units as u
from astropy.nddata import CCDData
import ccdproc
ratio = CCDData.read(sys.argv[1], unit="adu")
mask = ccdproc.ccdmask(ratio)
CCDData(mask.astype("uint8"), unit=u.dimensionless_unscaled).write(sys.argv[2])
"""


# the floor of a fresh process that does gpuflat mask's job with the same components and
# no masking at all: Python, NumPy, astropy.io.fits and numba imported (numba's BLAS probe
# skipped, the heaps frozen and not torn down at exit: gpuflat's command does the same),
# one cached numba function called (numba's first dispatch loads its registries and the
# cache), the ratio read and a uint8 image written
FLOOR_SCRIPT = """
import gc
import os
import sys
sys.modules["scipy.linalg"] = None
import numba
import numba.np.arraymath
import numpy as np
from astropy.io import fits
del sys.modules["scipy.linalg"]
gc.freeze()
@numba.njit(cache=True)
def count(mask):
    n = 0
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            n += mask[i, j]
    return n
data = fits.getdata(sys.argv[1])
mask = np.zeros(data.shape, np.uint8)
count(mask)
fits.writeto(sys.argv[2], mask)
os._exit(0)
"""


def make_ratio(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(1.0, 0.01, (size, size))
    a *= 1 + 0.02 * np.sin(np.arange(size) / 97.0)[None, :]
    a[:, size // 7] *= 0.85
    a[size // 3 :, size // 2] *= 1.05
    a[size // 5 : size // 5 + 6, size // 3 : size // 3 + 4] = 0.4
    hot = rng.random(a.shape) < 1e-4
    a[hot] *= 1.5
    dead = rng.random(a.shape) < 1e-4
    a[dead] *= 0.5
    return a.astype(np.float32)


def fresh_commands(name, ratio: Path, out: Path, cache: Path) -> bench.Command:
    if name == "gpuflat":
        exe = Path(sys.executable).with_name("gpuflat")
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "gpuflat"]
        return bench.Command([*argv, "mask", "--ratio", str(ratio), "-o", str(out / "mask.fits"),
                              "-q"])  # fmt: skip
    if name in ("ccdproc", "floor"):
        script = out.parent / f"{name}_mask.py"
        if not script.exists():  # once: numba's cache of the floor's function keys on it
            script.write_text(CCDPROC_SCRIPT if name == "ccdproc" else FLOOR_SCRIPT)
        return bench.Command([sys.executable, str(script), str(ratio), str(out / "mask.fits")])
    cl = out / "run.cl"  # iraf
    cl.write_text("\n".join([
        'set imtype = "fits"', "noao", "imred", "ccdred", "unlearn ccdmask",
        f'ccdmask ("{ratio}", "mask", ncmed=7, nlmed=7, ncsig=15, nlsig=15, lsigma=9., '
        "hsigma=9., ngood=5)", 'imcopy ("mask.pl", "mask.fits")', "logout", "",
    ]))  # fmt: skip
    return bench.Command([bench.irafcl()], str(cl), bench.iraf_env(cache))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=str(HERE / "results" / "mask.json"))
    parser.add_argument("--no-fresh", action="store_true", help="only the in-memory pair")
    args = parser.parse_args(argv)

    from astropy.io import fits
    from astropy.nddata import CCDData

    import gpuflat

    ratio = make_ratio(args.size)
    root = Path(tempfile.mkdtemp(prefix="gpuflat-mask-bench-"))
    ratio_path = root / "ratio.fits"
    fits.writeto(ratio_path, ratio)
    expected = None
    results = {"size": args.size, "repeat": args.repeat, "machine": bench.machine_facts(),
               "load_before": os.getloadavg()}  # fmt: skip

    # in memory: gpuflat warm (compiled) first, then alternate
    gpuflat.ccdmask(ratio[:64, :64])
    import ccdproc

    mem = {"gpuflat": [], "ccdproc": []}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ours = gpuflat.ccdmask(ratio)
        mem["gpuflat"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = ccdproc.ccdmask(CCDData(ratio, unit="adu"))
        mem["ccdproc"].append(time.perf_counter() - t0)
        if not np.array_equal(ours, ref):
            raise SystemExit("in memory: gpuflat's mask differs from ccdproc's")
        expected = ref
        print(f"in memory: gpuflat {mem['gpuflat'][-1]:.3f} s, ccdproc "
              f"{mem['ccdproc'][-1]:.2f} s", flush=True)  # fmt: skip
    results["in_memory"] = _summary(mem)

    if not args.no_fresh:
        names = ["gpuflat", "ccdproc", "floor"] + (["iraf"] if bench.irafcl() else [])
        runs = {n: [] for n in names}
        cache = root / "cache"
        out = bench.fresh(root / "floor")  # the floor's numba function compiled, untimed
        bench.timed(fresh_commands("floor", ratio_path, out, cache), out)
        for _ in range(args.repeat):
            for name in names:
                out = bench.fresh(root / name)
                seconds, _ = bench.timed(fresh_commands(name, ratio_path, out, cache), out)
                runs[name].append(seconds)
                got = fits.getdata(out / "mask.fits") != 0
                if name == "iraf":  # IRAF's ccdmask is not ccdproc's (docs/masks.md)
                    results["iraf_pixels_differing"] = int(np.count_nonzero(got != expected))
                elif name != "floor" and not np.array_equal(got, expected):
                    raise SystemExit(f"fresh {name}: the mask differs from ccdproc's")
                print(f"fresh {name}: {seconds:.2f} s", flush=True)
        results["fresh"] = _summary(runs)
    results["load_after"] = os.getloadavg()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    for kind in ("in_memory", "fresh"):
        if kind in results:
            r = results[kind]
            line = ", ".join(f"{n} {r['median_s'][n]:.3f} s" for n in r["median_s"])
            print(f"{kind} ({args.size}^2, medians of {args.repeat}): {line}; "
                  f"ccdproc / gpuflat = {r['ratio_ccdproc_over_gpuflat']:.0f}x"
                  + (f", iraf / gpuflat = {r['ratio_iraf_over_gpuflat']:.1f}x"
                     if "ratio_iraf_over_gpuflat" in r else "")
                  + (f"; the floor (no masking) {r['ratio_ccdproc_over_floor']:.0f}x"
                     if "ratio_ccdproc_over_floor" in r else ""))  # fmt: skip
    print(f"written: {args.json}")
    return 0


def _summary(runs: dict) -> dict:
    med = {n: statistics.median(v) for n, v in runs.items()}
    out = {"runs_s": runs, "median_s": med,
           "ratio_ccdproc_over_gpuflat": med["ccdproc"] / med["gpuflat"]}  # fmt: skip
    if "iraf" in med:
        out["ratio_iraf_over_gpuflat"] = med["iraf"] / med["gpuflat"]
    if "floor" in med:
        out["ratio_ccdproc_over_floor"] = med["ccdproc"] / med["floor"]
    return out


if __name__ == "__main__":
    sys.exit(main())
