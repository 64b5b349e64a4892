"""Publish the latest bench: the figures a user reads come from bench's JSON, never by hand.

    python bench/publish.py          # after bench.py (and cold.py): results/ -> docs and README

Reads ``bench/results/latest.json`` (``bench.py``) and, where present,
``bench/results/cold.json`` (``cold.py``), and writes:

* ``docs/benchmarks/latest.json``: the snapshot the README and the docs quote (committed);
* ``docs/benchmarks/latest.png``: gpuflat against IRAF and ccdproc per workload;
* the table between the ``bench:start``/``bench:end`` markers of README.md and
  docs/benchmarks.md.

``tests/test_bench.py`` checks that the README's table is the one this script makes from the
committed snapshot.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SNAPSHOT = ROOT / "docs" / "benchmarks" / "latest.json"
PLOT = SNAPSHOT.with_suffix(".png")
PAGES = (ROOT / "README.md", ROOT / "docs" / "benchmarks.md")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

#: the peers shown, and their names in the table
PEERS = {"iraf_avsigclip": "IRAF imcombine", "iraf_flatcombine": "IRAF flatcombine",
         "ccdproc": "ccdproc (the guide)"}  # fmt: skip


def snapshot(latest: dict, cold: dict | None) -> dict:
    """What is published of a bench run: per workload, its shape and each contender's
    median and ratio (the contender's time over gpuflat run's); the cold run's medians."""
    out = {"machine": latest["machine"], "workloads": {}}
    for name, w in latest["workloads"].items():
        out["workloads"][name] = {
            "frames": w["frames"], "rows": w["rows"], "cols": w["cols"], "dtype": w["dtype"],
            "filters": w["filters"], "detectors": w["detectors"], "repeats": w["repeats"],
            "median_s": {c: r["median_s"] for c, r in w["results"].items()},
            "ratio": {c: r["ratio"] for c, r in w["results"].items()},
        }  # fmt: skip
    if cold:
        keys = ("workload", "repeats", "median_s", "make_demo_s", "make_test_s")
        out["cold"] = {k: cold[k] for k in keys if k in cold}
    return out


def table(snap: dict) -> str:
    """The Markdown table (with the line that says when and where) for the pages."""
    m = snap["machine"]
    lines = [
        f"Bench of {m.get('date', 'an unrecorded date')}: {m['cpus']} CPU cores, "
        f"device `{m['device']}`, fresh processes, median of {_repeats(snap)}; ratios are "
        "the peer's time over gpuflat's (higher: gpuflat faster).",
        "",
        "| workload | `gpuflat run` | IRAF | × IRAF | ccdproc | × ccdproc |",
        "|---|---|---|---|---|---|",
    ]
    for name, w in snap["workloads"].items():
        t, r = w["median_s"], w["ratio"]
        iraf = next((c for c in ("iraf_avsigclip", "iraf_flatcombine") if c in t), None)
        shape = f"{w['frames']} × {w['rows']}×{w['cols']} {w['dtype']}"
        if w["filters"] > 1:
            shape = f"{w['filters']} filters × " + shape
        cells = [f"{name}: {shape}", f"{t['gpuflat_run']:.2f} s"]
        cells += [f"{t[iraf]:.2f} s ({PEERS[iraf]})", f"{r[iraf]:.2f}"] if iraf else ["", ""]
        cells += [f"{t['ccdproc']:.2f} s", f"{r['ccdproc']:.2f}"] if "ccdproc" in t else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    cold = snap.get("cold")
    if cold:
        c = cold["median_s"]
        lines += [
            "",
            f"First run on a new machine ({cold['workload']}, empty numba and CuPy caches, "
            f"`bench/cold.py`, median of {cold['repeats']}): {c['cold']:.1f} s against IRAF "
            f"imcombine's {c['iraf_avsigclip']:.2f} s ({c['cold'] / c['iraf_avsigclip']:.1f}×); "
            f"warm {c['warm']:.2f} s; `gpuflat warmup` {c['warmup']:.0f} s, after which a new "
            f"process's first run took {c['after_warmup']:.2f} s.",
        ]
        if "make_test_s" in cold:
            lines[-1] += (
                f" A fresh clone's `make demo` took {cold['make_demo_s']:.0f} s and its"
                f" `make test` {cold['make_test_s']:.0f} s."
            )
    return "\n".join(lines)


def _repeats(snap) -> int:
    return min(w["repeats"] for w in snap["workloads"].values())


def replace_block(text: str, block: str, where: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{where}: no {START} ... {END} block")
    return pattern.sub(lambda _: f"{START}\n{block}\n{END}", text)


def block_of(text: str) -> str | None:
    found = re.search(re.escape(START) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    return found.group(1) if found else None


def plot(snap: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(snap["workloads"])
    contenders = ["gpuflat_run", *PEERS]
    fig = Figure(figsize=(7.5, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(contenders)
    for k, c in enumerate(contenders):
        xs = [i + (k - (len(contenders) - 1) / 2) * width for i in range(len(names))]
        ys = [snap["workloads"][n]["median_s"].get(c, 0.0) for n in names]
        ax.bar(xs, ys, width, label="gpuflat run" if c == "gpuflat_run" else PEERS[c])
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("seconds, fresh process (lower is faster)")
    ax.set_title(f"bench of {snap['machine'].get('date', '?')}, {snap['machine']['cpus']} cores")
    ax.legend(fontsize="small")
    fig.savefig(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    results = Path(args.results)
    latest = json.loads((results / "latest.json").read_text())
    cold_path = results / "cold.json"
    cold = json.loads(cold_path.read_text()) if cold_path.exists() else None
    snap = snapshot(latest, cold)
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    SNAPSHOT.write_text(json.dumps(snap, indent=2) + "\n")
    plot(snap, PLOT)
    block = table(snap)
    for page in PAGES:
        page.write_text(replace_block(page.read_text(), block, page.name))
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
