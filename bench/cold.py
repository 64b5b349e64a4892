"""The first run on a new machine: ``gpuflat run`` with empty caches, side by side with IRAF.

    python bench/cold.py                 # W1, 3 repeats
    python bench/cold.py --suite         # also time `make demo` + `make test` on a fresh clone
    python bench/cold.py --suite-only    # only those, added to the last cold.json

Every figure is a fresh process timed from outside (``bench.py``'s ``timed``), in one run,
the contenders alternating:

* ``cold``: ``gpuflat run W1`` with ``NUMBA_CACHE_DIR`` and ``CUPY_CACHE_DIR`` pointing at
  new empty folders (what every new machine, container, farm node and upgrade sees);
* ``iraf_avsigclip``: IRAF ``imcombine`` on the same flats (when ``irafcl`` is there);
* ``warm``: ``gpuflat run W1`` with the caches the previous ``cold`` filled;
* ``warmup``: ``gpuflat warmup`` into new empty caches;
* ``after_warmup``: the first ``gpuflat run W1`` in a fresh process after that warmup.

Printed: each median and the ratios the targets are set in (cold / IRAF, after_warmup /
warm); written to ``bench/results/cold.json``. The suite's time is a fresh clone's, its
compiled kernels (numba's, the CUDA source's CPU builds, CuPy's) in new empty folders.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench

HERE = Path(__file__).parent


def caches(root: Path, name: str) -> dict:
    """An environment whose numba and CuPy caches are the (new, empty) folders root/name."""
    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "numba").mkdir(parents=True)
    (folder / "cupy").mkdir()
    return {**os.environ, "NUMBA_CACHE_DIR": str(folder / "numba"),
            "CUPY_CACHE_DIR": str(folder / "cupy")}  # fmt: skip


def gpuflat_command(args, env) -> bench.Command:
    exe = Path(sys.executable).with_name("gpuflat")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "gpuflat"]
    return bench.Command([*argv, *args], None, env)


def run_once(name, directory, out, cache, root, state) -> float:
    """One contender, timed; ``state`` carries the caches from ``cold`` to ``warm`` and from
    ``warmup`` to ``after_warmup``."""
    run = ["run", str(directory), "-o", str(out), "-q", "--device", bench.DEVICE]
    if name == "cold":
        state["cold"] = caches(root, "cold")
        cmd = gpuflat_command(run, state["cold"])
    elif name == "warm":
        cmd = gpuflat_command(run, state["cold"])
    elif name == "warmup":
        state["warmup"] = caches(root, "warmup")
        cmd = gpuflat_command(["warmup", "-q"], state["warmup"])
    elif name == "after_warmup":
        cmd = gpuflat_command(run, state["warmup"])
    else:
        cmd = bench.command(name, "W1", directory, out, cache)
    return bench.timed(cmd, out)[0]


def suite_time() -> dict:
    """`make demo` then `make test` in a fresh clone of this repository's HEAD."""
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "fresh"
        subprocess.run(["git", "clone", "-q", str(HERE.parent), str(clone)], check=True)
        env = {**os.environ, "GPUFLAT_SHIM_CACHE": f"{tmp}/shim", "CUPY_CACHE_DIR": f"{tmp}/cupy"}
        env.pop("NUMBA_CACHE_DIR", None)  # numba's cache: the clone's own __pycache__
        out = {}
        for target in ("demo", "test"):
            t0 = time.perf_counter()
            subprocess.run(["make", "-C", str(clone), target], check=True, env=env,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            out[f"make_{target}_s"] = round(time.perf_counter() - t0, 1)
        return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default=str(HERE / "cache"))
    parser.add_argument("--json", default=str(HERE / "results" / "cold.json"))
    parser.add_argument("--suite", action="store_true", help="also time make demo + make test")
    parser.add_argument("--suite-only", action="store_true",
                        help="only time make demo + make test, into the last --json")  # fmt: skip
    args = parser.parse_args(argv)
    if args.suite_only:
        path = Path(args.json)
        result = {**json.loads(path.read_text()), **suite_time()}
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"make demo {result['make_demo_s']} s, make test {result['make_test_s']} s: {path}")
        return
    cache = Path(args.cache)
    directory = bench.make_workload("W1", cache)
    bench.warm_cache(directory)
    bench.byte_compile()
    contenders = ["cold", "warm", "warmup", "after_warmup"]
    if bench.irafcl():
        contenders.insert(1, "iraf_avsigclip")
    times = {c: [] for c in contenders}
    root = cache / "cold-caches"
    outputs = cache / "outputs" / "cold"
    state = {}
    for _ in range(args.repeats):
        for name in contenders:  # in this order: warm follows cold, after_warmup warmup
            out = bench.fresh(outputs / name)
            times[name].append(run_once(name, directory, out, cache, root, state))
    medians = {c: statistics.median(t) for c, t in times.items()}
    result = {
        "workload": "W1",
        "repeats": args.repeats,
        "times_s": {c: [round(x, 2) for x in t] for c, t in times.items()},
        "median_s": {c: round(t, 2) for c, t in medians.items()},
        "after_warmup_over_warm": round(medians["after_warmup"] / medians["warm"], 2),
    }
    if "iraf_avsigclip" in medians:
        result["cold_over_iraf"] = round(medians["cold"] / medians["iraf_avsigclip"], 2)
    if args.suite:
        result.update(suite_time())
    print(f"{'':>16} {'median s':>9}  runs")
    for c in contenders:
        runs = ", ".join(f"{x:.2f}" for x in times[c])
        print(f"{c:>16} {medians[c]:9.2f}  {runs}")
    for key in ("cold_over_iraf", "after_warmup_over_warm", "make_demo_s", "make_test_s"):
        if key in result:
            print(f"{key}: {result[key]}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
