"""The benchmark runs end to end on tiny workloads and writes valid JSON (no speed assertions).
IRAF takes part only where ``irafcl`` is installed; the test passes either way."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench.py"


def test_bench_quick_runs_and_writes_json(tmp_path):
    out = tmp_path / "results.json"
    cmd = [sys.executable, str(BENCH), "--quick", "--cache", str(tmp_path / "cache"),
           "--json", str(out)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "gpuflat_run" in run.stdout and "ccdproc" in run.stdout
    data = json.loads(out.read_text())
    iraf = shutil.which("irafcl") is not None
    single = data["workloads"]["tiny"]
    expected = {"gpuflat_run", "gpuflat", "ccdproc", "astropy", "io_floor"}
    expected |= {"iraf_avsigclip", "iraf_sigclip"} if iraf else set()
    assert set(single["results"]) == expected
    night = data["workloads"]["tiny_night"]
    assert night["groups"] == ["B", "U", "V"]
    assert set(night["results"]) == {"gpuflat_run", "ccdproc"} | (
        {"iraf_flatcombine"} if iraf else set()
    )
    for workload in (single, night):
        assert workload["baseline"] == "gpuflat_run"
        results = workload["results"]
        assert results["gpuflat_run"]["ratio"] == 1.0
        for name, entry in results.items():
            assert entry["median_s"] > 0 and entry["ratio"] > 0
            assert entry["peak_rss_mb"] is None or entry["peak_rss_mb"] > 0
            if name != "io_floor":  # every product read back and compared, filter by filter
                assert set(entry["agreement"]) == {"max_rel_diff", "p999_rel_diff"}
        # gpuflat clips the scaled values like the astropy reference: same survivors; the
        # command line writes the same numbers (as float32) as the library call
        assert results["gpuflat_run"]["agreement"]["max_rel_diff"] < 1e-5
    assert single["results"]["gpuflat"]["agreement"]["max_rel_diff"] < 1e-5
    assert data["machine"]["cpus"] >= 1
    assert ("iraf" in data["machine"]) == iraf


def test_bench_refuses_unknown_names_and_leaves_out_unsuited_contenders(tmp_path):
    base = [sys.executable, str(BENCH), "--cache", str(tmp_path / "cache")]
    for bad in (["--contenders", "gpuflat_run,imcombine"], ["--workloads", "W9"]):
        run = subprocess.run([*base, *bad], capture_output=True, text=True, check=False)
        assert run.returncode == 2 and "Traceback" not in run.stderr
        assert ("imcombine" if "--contenders" in bad else "W9") in run.stderr
    out = tmp_path / "results.json"
    cmd = [*base, "--quick", "--contenders", "gpuflat_run,workers_1,io_floor", "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "tiny: not a contender for this workload, left out: workers_1" in run.stdout
    assert "tiny_night: not a contender for this workload, left out: workers_1, io_floor" in (
        run.stdout
    )
    data = json.loads(out.read_text())["workloads"]
    assert set(data["tiny"]["results"]) == {"gpuflat_run", "io_floor"}
    assert set(data["tiny_night"]["results"]) == {"gpuflat_run"}


def test_kernel_bench_runs():
    script = BENCH.with_name("kernel.py")
    argv = [sys.executable, str(script), "--frames", "5", "--size", "64", "--repeat", "1"]
    run = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert "M samples/s" in run.stdout and "np.median" in run.stdout


def test_the_pages_quote_the_published_bench():
    """The README's and docs/benchmarks.md's bench tables are the ones bench/publish.py makes
    from the committed snapshot (figures come from bench's JSON, never by hand)."""
    sys.path.insert(0, str(BENCH.parent))
    import publish

    snap = json.loads(publish.SNAPSHOT.read_text())
    for page in publish.PAGES:
        assert publish.block_of(page.read_text()) == publish.table(snap), page.name
    assert publish.PLOT.is_file()
