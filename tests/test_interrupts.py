"""Interrupted runs (SIGINT, SIGTERM, SIGHUP) and what their reports say; reports of runs
that skip existing products."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import flat_stack, write_fits

import gpuflat
from gpuflat import _atomic, _products
from gpuflat.cli import main
from gpuflat.farm import units

FILTERS = ("B", "R", "V")  # the groups, in the order a run makes them


@pytest.fixture
def night(tmp_path, rng):
    d = tmp_path / "night"
    d.mkdir()
    for filt in FILTERS:
        for i, a in enumerate(flat_stack(rng, n=3, shape=(16, 16))):
            write_fits(d / f"flat-{filt}-{i}.fits", a, IMAGETYP="FLAT", FILTER=filt, EXPTIME=2.0)
    return d


def product(out, filt):
    return out / f"combined_flat_filter_{filt}.fits"


def read_report(path) -> dict:
    """The report, checked: every product it says written is on disk, complete, and no
    other product is."""
    report = json.loads(Path(path).read_text())
    written = {e["product"] for e in report["groups"] if e["status"] == "written"}
    for p in written:
        with fits.open(p, checksum=True) as hdul:
            assert hdul[0].header["COMBINED"] is True
    for e in report["groups"]:
        if e["status"] not in ("written", "skipped (exists)"):
            assert not Path(e["product"]).exists(), e
    return report


def no_temporaries(out):
    return not [p.name for p in Path(out).iterdir() if ".tmp" in p.name]


def expected_image(night, filt):
    return gpuflat.combine(sorted(str(p) for p in night.glob(f"flat-{filt}-*.fits"))).image


@pytest.fixture(autouse=True)
def signals_default():
    """The three signals at their default disposition for every test here, as an
    interactive shell gives them (a run keeps a signal its parent ignores ignored: under
    ``nohup`` SIGHUP would not stop it, and a shell's background job ignores SIGINT); the
    parent's dispositions back afterwards."""
    numbers = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {s: signal.getsignal(s) for s in numbers}
    for s in numbers:
        if before[s] == signal.SIG_IGN:
            signal.signal(s, signal.SIG_DFL)
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


def test_a_run_keeps_an_ignored_signal_ignored(night, tmp_path, monkeypatch):
    """Started under ``nohup`` (SIGHUP ignored), a run is not stopped by SIGHUP."""
    real = units.group_unit

    def then_signal(*args, **kwargs):
        entry = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGHUP)
        return entry

    monkeypatch.setattr(units, "group_unit", then_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    out = tmp_path / "out"
    assert main(["run", str(night), "-o", str(out), "-q"]) == 0
    assert len(list(out.glob("*.fits"))) == 3
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_after_the_first_product(night, tmp_path, monkeypatch, capsys, sig):
    """The signal arrives once the first group's product is handed over: that product is
    finished, listed and reported; the run stops there, says so, and exits 128 + the
    signal's number; nothing else is written, no temporary stays, the handlers are the
    previous ones again."""
    real = units.group_unit
    number = signal.Signals[sig].value

    def then_signal(*args, **kwargs):
        entry = real(*args, **kwargs)
        os.kill(os.getpid(), number)
        return entry

    monkeypatch.setattr(units, "group_unit", then_signal)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    out, report = tmp_path / "out", tmp_path / "report.json"
    argv = ["run", str(night), "-o", str(out), "--report", str(report)]
    assert main(argv) == 128 + number
    assert {s: signal.getsignal(s) for s in before} == before
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"{product(out, 'B')}  (3 frames, group B)"]
    assert f"interrupted ({sig}) after 1 of 3 group(s): 1 written" in captured.err
    assert f"report: {report}" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["combined_flat_filter_B.fits"]
    np.testing.assert_array_equal(fits.getdata(product(out, "B")), expected_image(night, "B"))
    data = read_report(report)
    assert data["complete"] is False and data["interrupted"] is True and data["signal"] == sig
    assert [(e["group"], e["status"]) for e in data["groups"]] == [("B", "written")]
    assert data["planned"] == 3 and data["command"] == ["gpuflat", *argv]
    assert data["groups"][0]["frames_combined"] == 3


def test_a_signal_while_a_group_is_combined_drops_its_product(night, tmp_path, monkeypatch, capsys):
    """SIGTERM while the second group's product is being streamed to its temporary file
    (one band stored): that product is dropped, its temporary removed; the first is
    written, the report says the second was interrupted."""
    real = _products.StreamedProduct.done
    seen = []

    def done(self, r0, r1):
        real(self, r0, r1)
        if self.path.name.endswith("_R.fits"):
            seen.append(self._tmp.exists())
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(_products.StreamedProduct, "done", done)
    out, report = tmp_path / "out", tmp_path / "report.json"
    assert main(["run", str(night), "-o", str(out), "-q", "--report", str(report)]) == 143
    assert seen == [True]  # the temporary was there
    assert no_temporaries(out)
    assert sorted(p.name for p in out.iterdir()) == ["combined_flat_filter_B.fits"]
    data = read_report(report)
    assert [(e["group"], e["status"]) for e in data["groups"]] == [
        ("B", "written"),
        ("R", "interrupted"),
    ]
    assert "R interrupted" in capsys.readouterr().err


def test_a_signal_while_a_product_is_written_waits_for_it(night, tmp_path, monkeypatch):
    """SIGTERM while the first product is made durable on the writer's thread (and the
    second group is combined): the written product is finished and reported as written,
    the second group's is dropped."""
    real_fsync = _atomic.fsync
    sent = threading.Event()

    def fsync(path):
        if not sent.is_set():
            sent.set()
            os.kill(os.getpid(), signal.SIGTERM)  # handled on the main thread
            threading.Event().wait(0.3)  # while the main thread stops
        real_fsync(path)

    monkeypatch.setattr(_atomic, "fsync", fsync)
    out, report = tmp_path / "out", tmp_path / "report.json"
    assert main(["run", str(night), "-o", str(out), "-q", "--report", str(report)]) == 143
    assert no_temporaries(out)
    data = read_report(report)
    assert data["groups"][0]["status"] == "written" and product(out, "B").exists()
    assert [e["status"] for e in data["groups"][1:]] in ([], ["interrupted"])
    assert len(list(out.glob("*.fits"))) == 1


def test_a_second_signal_does_not_stop_the_clean_up(night, tmp_path, monkeypatch):
    """Signals that come while an interrupted run finishes its product in flight and
    writes its report are ignored: the product and the report are there."""
    real_fsync = _atomic.fsync
    calls = []

    def fsync(path):
        calls.append(path)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
            threading.Event().wait(0.2)
            os.kill(os.getpid(), signal.SIGTERM)  # during the wait for this write
            threading.Event().wait(0.2)
        real_fsync(path)

    monkeypatch.setattr(_atomic, "fsync", fsync)
    out, report = tmp_path / "out", tmp_path / "report.json"
    assert main(["run", str(night), "-o", str(out), "-q", "--report", str(report)]) == 130
    data = read_report(report)
    assert data["signal"] == "SIGINT" and data["groups"][0]["status"] == "written"
    assert no_temporaries(out)


@pytest.mark.parametrize("compress", [False, True])
def test_an_interrupt_as_a_product_is_handed_over(night, tmp_path, monkeypatch, compress):
    """The library's run, interrupted right after the first product was queued on the
    writer's thread, before the writer kept its future: the report says what became of
    that product (written, and on disk; or, streamed, dropped before its write began),
    the interrupt comes back with the outcome, no temporary stays."""
    from concurrent.futures import wait

    from gpuflat.farm import RunOptions, run

    def call(self, target, timings, write):
        wait(self._pending.values())
        self._pool.submit(self._write, target, timings, write)
        raise KeyboardInterrupt

    monkeypatch.setattr(units.Writer, "__call__", call)
    out, report = tmp_path / "out", tmp_path / "report.json"
    options = RunOptions(inputs=(str(night),), outdir=str(out), report=str(report),
                         compress=compress, device="cpu")  # fmt: skip
    with pytest.raises(KeyboardInterrupt) as stopped:
        run(options)
    data = read_report(report)
    assert stopped.value.outcome.report["groups"] == data["groups"]
    assert data["signal"] == "SIGINT" and len(data["groups"]) == 1
    status = data["groups"][0]["status"]
    if compress:  # written whole on the writer's thread: nothing to drop
        assert status == "written"
    assert (status == "written") == product(out, "B").exists()
    assert status == "written" or status.endswith("dropped (interrupted)")
    assert no_temporaries(out)


SIGNALLED = """
import sys, time
from gpuflat import _atomic, cli

real = _atomic.fsync

def slow(path):  # the temporary is written and verified; the signal comes meanwhile
    print("writing", flush=True)
    time.sleep(1)
    real(path)

_atomic.fsync = slow
sys.argv = ["gpuflat", *sys.argv[1:]]
cli.console()
"""


def test_sigterm_to_the_process(night, tmp_path):
    """``kill -TERM`` from outside while the first product is being written: the process
    finishes that product, lists it, writes the report and exits 143, leaving no
    temporary."""
    out, report = tmp_path / "out", tmp_path / "report.json"
    argv = ["run", str(night), "-o", str(out), "--report", str(report)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGNALLED, *argv], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    with proc:
        try:
            assert proc.stdout.readline().strip() == "writing"
            os.kill(proc.pid, signal.SIGTERM)
            rest, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 143, err
    assert f"{product(out, 'B')}  (3 frames, group B)" in rest.splitlines()
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert no_temporaries(out)
    data = read_report(report)
    assert data["interrupted"] is True and data["groups"][0]["status"] == "written"


def test_a_rerun_with_the_same_report_keeps_what_the_products_record(night, tmp_path):
    """The second run skips every product; its report's entries carry what the products
    record (inputs, scales, NCOMBINE, parameters, the rejected fraction and the pixels
    without survivor from the NCOMBINE plane), equal to the first run's figures."""
    out, report = tmp_path / "out", tmp_path / "report.json"
    argv = ["run", str(night), "-o", str(out), "-q", "--report", str(report), "--sigma-low", "3"]
    assert main(argv) == 0
    first = read_report(report)
    assert first["complete"] is True and first["interrupted"] is False
    assert first["command"] == ["gpuflat", *argv] and first["host"]
    assert first["date"].endswith("+00:00")
    assert main(argv) == 0
    second = read_report(report)
    assert [e["status"] for e in second["groups"]] == ["skipped (exists)"] * 3
    for a, b in zip(first["groups"], second["groups"], strict=True):
        assert b["product"] == a["product"] and b["frames_combined"] == a["frames_combined"] == 3
        assert [f["file"] for f in b["frames"]] == [
            os.path.basename(f["file"]) for f in a["frames"]
        ]
        # (a header card holds 20 characters of a number)
        assert [f["scale"] for f in b["frames"]] == pytest.approx(
            [f["scale"] for f in a["frames"]], rel=1e-15
        )
        assert b["rejected_fraction"] == a["rejected_fraction"]
        assert b["pixels_without_survivor"] == a["pixels_without_survivor"]
        assert b["parameters"]["sigma_low"] == 3.0 and b["backend"] == a["backend"]
        assert b["made"]["gpuflat"] == gpuflat.__version__
    # a file in the product's place that gpuflat did not write: said so, not a stub
    product(out, "B").unlink()
    product(out, "B").write_text("not a product")
    assert main(argv) == 0
    entry = read_report(report)["groups"][0]
    assert entry["status"] == "skipped (exists)" and entry["note"].startswith("not a product")
