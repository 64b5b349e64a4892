"""`gpuflat run --workers N / --scheduler ADDRESS`: the groups on a dask.distributed cluster.

Each test starts its own small cluster (a few seconds); ``-m 'not distributed'`` leaves
them out.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from astropy.io import fits
from conftest import flat_stack, write_fits

import gpuflat.farm.units
from gpuflat.cli import main
from gpuflat.farm import RunOptions
from gpuflat.farm import dask as farm_dask

distributed = pytest.importorskip("distributed")  # in the test extra: runs in `make test`

pytestmark = pytest.mark.distributed


@pytest.fixture
def night(tmp_path, rng):
    """Three filters of three or four tiny frames."""
    d = tmp_path / "night"
    d.mkdir()
    for filt, n in (("B", 3), ("V", 4), ("R", 3)):
        for i, a in enumerate(flat_stack(rng, n=n, shape=(40, 30))):
            write_fits(d / f"flat-{filt}-{i}.fits", a, IMAGETYP="FLAT", FILTER=filt)
    return d


def _same_products(a, b):
    names = sorted(p.name for p in a.glob("*.fits"))
    assert names == sorted(p.name for p in b.glob("*.fits")) and names
    for name in names:
        with fits.open(a / name) as ha, fits.open(b / name) as hb:
            assert [h.name for h in ha] == [h.name for h in hb]
            for x, y in zip(ha, hb, strict=True):
                assert (x.data is None) == (y.data is None)  # a mosaic's primary has none
                if x.data is not None:
                    assert x.data.dtype == y.data.dtype
                    np.testing.assert_array_equal(x.data, y.data)  # bit for bit, NaN == NaN
                assert _cards(x.header) == _cards(y.header), name


def _cards(header):
    """The cards apart from the date (GPF_DATE, CHECKSUM over it, and the checksums'
    "updated <date>" comments)."""
    return [
        (c.keyword, c.value, "" if c.keyword == "DATASUM" else c.comment)
        for c in header.cards
        if c.keyword not in ("GPF_DATE", "CHECKSUM")
    ]


def _entries(report):
    """The report's entries by group, without timings, products by name."""
    out = {}
    for g in json.loads(report.read_text())["groups"]:
        g.pop("seconds", None)
        g.pop("timings", None)
        g["product"] = os.path.basename(g["product"])
        out[g["group"]] = g
    return out


def test_local_cluster_products_identical_to_in_process(night, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert (
        main(["run", str(night), "-o", str(one), "-q", "--report", str(tmp_path / "1.json")]) == 0
    )
    argv = [
        "run",
        str(night),
        "-o",
        str(two),
        "--workers",
        "2",
        "--report",
        str(tmp_path / "2.json"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("frames, group") == 3  # each unit reported as it completes
    _same_products(one, two)
    assert _entries(tmp_path / "1.json") == _entries(tmp_path / "2.json")
    report = json.loads((tmp_path / "2.json").read_text())
    assert report["configuration"]["workers"] == 2
    assert not list(two.glob(".*tmp*"))
    # idempotent: a second run skips every existing product
    assert main(argv) == 0
    assert all(e["status"] == "skipped (exists)" for e in _entries(tmp_path / "2.json").values())


def test_mosaic_extensions_on_workers_identical_to_in_process(tmp_path, capsys):
    """Mosaic groups scaled per extension run one task per extension on the cluster; the
    products (and with --scale-per exposure, one unit per group) equal the in-process run."""
    from gpuflat._simulate import simulate_night

    night = tmp_path / "mosaics"
    simulate_night(night, shape=(24, 20), n_dome=3, n_twilight=3, mef=3, seed=4)
    for k, extra in enumerate(([], ["--scale-per", "exposure"], ["--ext", "CCD3,CCD1"])):
        one, two = tmp_path / f"one{k}", tmp_path / f"two{k}"
        assert main(["run", str(night), "-o", str(one), "-q", *extra]) == 0
        argv = ["run", str(night), "-o", str(two), "-q", "--workers", "2", *extra]
        assert main([*argv, "--report", str(tmp_path / "2.json")]) == 0
        _same_products(one, two)
        report = json.loads((tmp_path / "2.json").read_text())
        assert len(report["groups"]) == 3
        assert [g["status"] for g in report["groups"]] == ["written"] * 3
    with fits.open(next(two.glob("*.fits"))) as hdul:  # --ext CCD3,CCD1: the file's order
        assert [h.name for h in hdul if h.name.endswith("_MASK")] == ["CCD1_MASK", "CCD3_MASK"]
    # frame QA sees every extension once they are combined, and combines the group again
    saturated = sorted(night.glob("twiflat*.fits"))[0]
    with fits.open(saturated, mode="update") as hdul:
        hdul["CCD2"].data *= 8
    qa = ["--level-range", "100", "60000", "--min-frames", "2"]  # two frames are left
    for k, extra in ((1, []), (2, ["--workers", "2"])):
        assert main(["run", str(night), "-o", str(tmp_path / f"qa{k}"), *qa, *extra]) == 0
        out = capsys.readouterr()
        assert f"{saturated.name}: left out of group V" in out.err
        assert "(2 of 3 frames, group V)" in out.out
    _same_products(tmp_path / "qa1", tmp_path / "qa2")
    # --skip-bad: the files to combine are decided once for every extension's task
    lacking = sorted(night.glob("flat-gpp*.fits"))[1]
    with fits.open(lacking, mode="update") as hdul:
        hdul["CCD2"].header["EXTNAME"] = "CCD9"
    for k, extra in ((1, []), (2, ["--workers", "2"])):
        argv = ["run", str(night), "-o", str(tmp_path / f"bad{k}"), "--skip-bad", "--min-frames",
                "2", *extra]  # fmt: skip
        assert main(argv) == 0
        out = capsys.readouterr()
        assert f"{lacking.name}: skipped" in out.err and "no extension CCD2" in out.err
        assert "(2 of 3 frames, group g'')" in out.out
    _same_products(tmp_path / "bad1", tmp_path / "bad2")


def test_split_mosaic_units(tmp_path):
    """Which groups are split into extension tasks."""
    from gpuflat._select import group_frames, is_selected, read_info
    from gpuflat._simulate import simulate_night

    paths = simulate_night(tmp_path / "m", shape=(16, 16), n_dome=0, n_twilight=3, mef=2)
    infos = [read_info(p) for p in paths]
    (group,) = group_frames([i for i in infos if is_selected(i)], ("FILTER",))
    options = RunOptions(inputs=("x",))
    target = tmp_path / "product.fits"
    names = {str(f.path) for f in group.frames}
    split = farm_dask._extensions_to_split(options, group, target)
    assert split == ([("CCD1", 1), ("CCD2", 1)], names)
    exposure = RunOptions(inputs=("x",), scale_per="exposure")
    assert farm_dask._extensions_to_split(exposure, group, target) is None
    one = RunOptions(inputs=("x",), ext="CCD2")
    assert farm_dask._extensions_to_split(one, group, target) is None  # one: one unit
    target.write_bytes(b"")
    assert farm_dask._extensions_to_split(options, group, target) is None  # skipped anyway


PRELOAD = """
import os
import signal

import gpuflat.farm.units as units

# a preload may run more than once in a worker process: wrap the original only
_combine_group = getattr(units, "_unpatched_combine_group", units.combine_group)
units._unpatched_combine_group = _combine_group


def _dies_once(options, group, *rest, **kw):
    if group.label() == "V":
        try:
            os.close(os.open({marker!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass  # the retry: combine normally
        else:
            os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-unit
    return _combine_group(options, group, *rest, **kw)


units.combine_group = _dies_once
"""


def test_killed_worker_unit_is_retried(night, tmp_path):
    """The unit of group V kills its worker process the first time it runs; the scheduler
    hands it to a new worker and every product is still written. Run in a subprocess (a
    killed worker must not take the test session with it), bounded in time."""
    marker = tmp_path / "killed-once"
    preload = tmp_path / "preload_kill.py"
    preload.write_text(textwrap.dedent(PRELOAD.format(marker=str(marker))))
    env = {
        **os.environ,
        "DASK_DISTRIBUTED__WORKER__PRELOAD": json.dumps([str(preload)]),
        "PYTHONWARNINGS": "error::DeprecationWarning",
    }
    out, report = tmp_path / "out", tmp_path / "report.json"
    cmd = [sys.executable, "-m", "gpuflat", "run", str(night), "-o", str(out)]
    cmd += ["--workers", "2", "--report", str(report)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: the workers go with it on timeout
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"gpuflat run --workers did not finish in 180 s:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr
    assert marker.exists()  # the worker was killed
    assert sorted(p.name for p in out.glob("*.fits")) == [
        "combined_flat_filter_B.fits",
        "combined_flat_filter_R.fits",
        "combined_flat_filter_V.fits",
    ]
    assert {e["status"] for e in _entries(report).values()} == {"written"}
    assert fits.getheader(out / "combined_flat_filter_V.fits")["NCOMBINE"] == 4
    assert not list(out.glob(".*tmp*"))
    assert "Traceback" not in stderr and stdout.count("frames, group") == 3


def test_scheduler_address_and_unit_failing_for_good(night, tmp_path, capsys, monkeypatch):
    """--scheduler sends the units to an existing cluster (here an in-process one, so the
    monkeypatch reaches its workers). A unit that keeps raising is retried, then listed as
    failed in the report, and the exit code is 1; the other products are written."""
    calls = []
    combine_group = gpuflat.farm.units.combine_group

    def broken_for_v(options, group, *rest, **kw):
        if group.label() == "V":
            calls.append(group.label())
            raise RuntimeError("boom")
        return combine_group(options, group, *rest, **kw)

    monkeypatch.setattr(gpuflat.farm.units, "combine_group", broken_for_v)
    out, report = tmp_path / "out", tmp_path / "report.json"
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        argv = ["run", str(night), "-o", str(out), "--scheduler", cluster.scheduler_address]
        code = main([*argv, "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 1
    assert len(calls) == 1 + farm_dask.RETRIES
    assert sorted(p.name for p in out.glob("*.fits")) == [
        "combined_flat_filter_B.fits",
        "combined_flat_filter_R.fits",
    ]
    entries = _entries(report)
    assert entries["V"]["status"] == "failed: RuntimeError: boom"
    assert entries["B"]["status"] == entries["R"]["status"] == "written"
    assert "group V failed: RuntimeError: boom" in err and "Traceback" not in err
    data = json.loads(report.read_text())
    assert data["backend"] == "auto (chosen by the workers)"
