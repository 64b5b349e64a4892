"""The work units of a batch run (gpuflat.farm.units): the seam in-process and Dask runs
share."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import flat_stack, write_fits

from gpuflat.farm import RunOptions, run, select, units
from gpuflat.farm.report import jsonable, write_report


@pytest.fixture
def night(tmp_path, rng):
    d = tmp_path / "night"
    d.mkdir()
    for i, a in enumerate(flat_stack(rng, n=4, shape=(30, 20))):
        write_fits(d / f"flat-V-{i}.fits", a, IMAGETYP="FLAT", FILTER="V")
    return d


def _unit(options):
    (group,) = select(options).groups
    target = Path(options.outdir) / group.product_name()
    return group, target


@pytest.mark.parametrize("streamed", [True, False])
def test_product_that_appears_before_the_write_is_not_clobbered(
    night, tmp_path, monkeypatch, streamed
):
    """Another run (or a Dask retry) writes the product after this unit checked that it
    did not exist: without overwrite, this unit fails and the other product stays. Both
    ways of writing: streamed as the group is combined, or whole (a compressed product)."""
    out = tmp_path / "out"
    out.mkdir()
    options = RunOptions(inputs=(str(night),), outdir=str(out), device="cpu",
                         compress=not streamed)  # fmt: skip
    group, target = _unit(options)
    if streamed:
        real_write = units.StreamedProduct.write

        def someone_else_first(self, *args, **kwargs):
            target.write_bytes(b"the other run's product")
            return real_write(self, *args, **kwargs)

        monkeypatch.setattr(units.StreamedProduct, "write", someone_else_first)
    else:
        real_write = units.write_product

        def someone_else_first(path, *args, **kwargs):
            path.write_bytes(b"the other run's product")
            return real_write(path, *args, **kwargs)

        monkeypatch.setattr(units, "write_product", someone_else_first)
    entry = units.group_unit(options, group, target)
    assert entry["status"].startswith("failed") and "exists" in entry["status"]
    assert target.read_bytes() == b"the other run's product"
    assert [p.name for p in out.iterdir()] == [target.name]  # no temporary left behind


def test_existing_product_is_skipped_unless_overwrite(night, tmp_path):
    out = tmp_path / "out"
    options = RunOptions(inputs=(str(night),), outdir=str(out), device="cpu")
    assert run(options).failed == 0
    group, target = _unit(options)
    before = target.stat().st_ino
    assert units.group_unit(options, group, target)["status"] == "skipped (exists)"
    again = RunOptions(inputs=(str(night),), outdir=str(out), device="cpu", overwrite=True)
    assert units.group_unit(again, group, target)["status"] == "written"
    with fits.open(target) as a:
        assert a[0].header["NCOMBINE"] == 4
    assert target.stat().st_ino != before  # a new file moved into place


def test_events_of_an_in_process_run(night, tmp_path):
    events = []
    options = RunOptions(inputs=(str(night),), outdir=str(tmp_path / "o"), mem_limit=2e4)
    outcome = run(options, lambda kind, data: events.append((kind, data)))
    kinds = [k for k, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "progress" in kinds
    done = [d for k, d in events if k == "progress"][-1]
    assert done["done"] == done["total"] > 1
    assert outcome.report["groups"][0]["status"] == "written" and outcome.failed == 0


def test_report_is_strict_json(tmp_path):
    """NaN and infinities become null: any strict JSON parser reads the report."""
    report = {"a": float("nan"), "b": [np.float32("inf"), np.int64(3), (1.5, -math.inf)]}
    path = write_report(tmp_path / "r.json", report)

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data == {"a": None, "b": [None, 3, [1.5, None]]}
    assert jsonable({"x": np.bool_(True)}) == {"x": True}


@pytest.fixture
def two_groups(tmp_path, rng):
    d = tmp_path / "two"
    d.mkdir()
    for filt in ("B", "V"):
        for i, a in enumerate(flat_stack(rng, n=3, shape=(30, 20))):
            write_fits(d / f"flat-{filt}-{i}.fits", a, IMAGETYP="FLAT", FILTER=filt)
    return d


def test_write_in_flight_is_finished_when_a_later_group_fails(two_groups, tmp_path, monkeypatch):
    """Group B's product is still being made durable (a slow fsync, in the background) when
    group V fails with an unexpected error: the run raises, but B's product is in place,
    complete, first."""
    import threading
    import time

    from gpuflat import _atomic

    started = threading.Event()
    real_fsync, real_combine = _atomic.fsync, units.combine_group

    def slow_fsync(path):
        started.set()
        time.sleep(0.5)
        real_fsync(path)

    def fails_for_v(options, group, *rest, **kw):
        if group.label() == "V":
            assert started.wait(10)  # B's fsync is in flight
            raise RuntimeError("boom")
        return real_combine(options, group, *rest, **kw)

    monkeypatch.setattr(_atomic, "fsync", slow_fsync)
    monkeypatch.setattr(units, "combine_group", fails_for_v)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        run(RunOptions(inputs=(str(two_groups),), outdir=str(out), device="cpu"))
    assert [p.name for p in out.iterdir()] == ["combined_flat_filter_B.fits"]  # no temporary
    with fits.open(out / "combined_flat_filter_B.fits", checksum=True) as hdul:
        assert hdul[0].header["NCOMBINE"] == 3 and hdul["NCOMBINE"].data.min() >= 1


def test_one_product_in_flight(tmp_path, rng, monkeypatch):
    """Products are written in the background while the next group is combined, but one at
    a time: a unit hands its product over only once the previous one is written, so a run
    never holds more than one group's results beside those being combined."""
    import time

    d = tmp_path / "three"
    d.mkdir()
    for filt in ("B", "R", "V"):
        for i, a in enumerate(flat_stack(rng, n=3, shape=(30, 20))):
            write_fits(d / f"flat-{filt}-{i}.fits", a, IMAGETYP="FLAT", FILTER=filt)
    real_write, real_combine = units.write_now, units.combine_group
    written, handed = {}, {}

    def slow_write(target, *args, **kwargs):
        time.sleep(0.3)
        real_write(target, *args, **kwargs)
        written[target.name] = time.perf_counter()

    def combine(options, group, *rest, **kw):
        entry = real_combine(options, group, *rest, **kw)
        handed[group.label()] = time.perf_counter()  # the product was handed over
        return entry

    monkeypatch.setattr(units, "write_now", slow_write)
    monkeypatch.setattr(units, "combine_group", combine)
    outcome = run(RunOptions(inputs=(str(d),), outdir=str(tmp_path / "o"), device="cpu"))
    assert outcome.failed == 0 and len(written) == 3
    for before, after in (("B", "R"), ("R", "V")):
        assert written[f"combined_flat_filter_{before}.fits"] <= handed[after]
    # the last product was still being written when its unit returned: in the background
    assert handed["V"] < written["combined_flat_filter_V.fits"]


def test_groups_share_one_workspace(tmp_path, rng):
    """A run lends every group the same stack memory (grown when a group needs more): the
    products equal those of separate library calls, whatever came before each group."""
    import gpuflat
    from gpuflat._memory import Workspace

    ws = Workspace()
    a = ws.stack(100, np.float32)
    waited = []
    r1, r2 = ws.results(100, lambda: waited.append(1)), ws.results(100, lambda: waited.append(2))
    assert not np.shares_memory(r1, r2) and waited == []
    r3 = ws.results(100, lambda: waited.append(3))  # the first one again, once its user is done
    assert np.shares_memory(r1, r3) and waited == [1]
    b = ws.stack(60, np.float32)
    assert b.size == 60 and np.shares_memory(a, b)  # a smaller stack reuses the memory
    c = ws.stack(200, np.float32)
    assert c.size == 200 and not np.shares_memory(a, c)  # a larger one replaces it
    d = tmp_path / "sizes"
    d.mkdir()
    for filt, n in (("B", 5), ("R", 3), ("V", 7)):  # run in this order: grow, shrink, grow
        for i, frame in enumerate(flat_stack(rng, n=n, shape=(30, 20))):
            write_fits(d / f"flat-{filt}-{i}.fits", frame, IMAGETYP="FLAT", FILTER=filt)
    out = tmp_path / "o"
    assert run(RunOptions(inputs=(str(d),), outdir=str(out), device="cpu")).failed == 0
    for filt in ("B", "R", "V"):
        want = gpuflat.combine(sorted(str(p) for p in d.glob(f"flat-{filt}-*.fits")))
        with fits.open(out / f"combined_flat_filter_{filt}.fits") as hdul:
            np.testing.assert_array_equal(hdul[0].data, want.image)
            np.testing.assert_array_equal(hdul["UNCERT"].data, want.uncertainty)
            np.testing.assert_array_equal(hdul["NCOMBINE"].data, want.count)


def test_levels_leave_the_writers_core_while_a_product_is_written(
    two_groups, tmp_path, monkeypatch
):
    """The first group's levels use every core; the second group's are measured while the
    first product is still being written (held here until they are), on the cores the
    writer leaves (``busy_cores=1``); the products are those of separate library calls."""
    import threading

    import gpuflat
    from gpuflat.backends import NumbaBackend

    real_level, real_write = NumbaBackend.frame_level, units.write_now
    seen, second = [], threading.Event()

    def level(self, frame, mask, how, busy_cores=0):
        seen.append(busy_cores)
        if len(seen) > 3:  # group V's frames: B's write may go on now
            second.set()
        return real_level(self, frame, mask, how, busy_cores)

    def held_write(target, *args, **kwargs):
        if target.name.endswith("_B.fits"):
            assert second.wait(60)
        return real_write(target, *args, **kwargs)

    monkeypatch.setattr(NumbaBackend, "frame_level", level)
    monkeypatch.setattr(units, "write_now", held_write)
    out = tmp_path / "o"
    assert run(RunOptions(inputs=(str(two_groups),), outdir=str(out), device="cpu")).failed == 0
    assert seen == [0, 0, 0, 1, 1, 1]
    monkeypatch.setattr(NumbaBackend, "frame_level", real_level)
    for filt in ("B", "V"):
        want = gpuflat.combine(sorted(str(p) for p in two_groups.glob(f"flat-{filt}-*.fits")))
        with fits.open(out / f"combined_flat_filter_{filt}.fits") as hdul:
            np.testing.assert_array_equal(hdul[0].data, want.image)


@pytest.mark.parametrize("compress", [False, True])
def test_background_write_failure_is_reported(two_groups, tmp_path, monkeypatch, compress):
    """The products' fsync fails (streamed products, and whole ones): both groups fail
    with its error, and neither leaves its temporary file behind."""
    from gpuflat import _atomic

    def broken(path):
        raise OSError("disk full")

    monkeypatch.setattr(_atomic, "fsync", broken)
    out = tmp_path / "o"
    outcome = run(RunOptions(inputs=(str(two_groups),), outdir=str(out), compress=compress))
    assert outcome.failed == 2
    assert {e["status"] for e in outcome.report["groups"]} == {"failed: disk full"}
    assert not list(out.glob("*.fits*"))


KILLED = """
import sys, time
from gpuflat import _atomic
from gpuflat.farm import RunOptions, run

def stuck(path):  # the temporary is written and verified; killed before its fsync ends
    print("writing", flush=True)
    time.sleep(60)

_atomic.fsync = stuck
run(RunOptions(inputs=(sys.argv[1],), outdir=sys.argv[2], device="cpu"))
"""


def test_run_killed_during_a_background_write_leaves_no_product(night, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(night), str(out)], stdout=subprocess.PIPE, text=True
    )
    with proc:
        try:
            assert proc.stdout.readline().strip() == "writing"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
    left = [p.name for p in out.iterdir()]
    assert len(left) == 1 and left[0].startswith(".combined_flat_filter_V.fits.tmp-")
    # the next run writes the product and removes the dead run's temporary
    assert run(RunOptions(inputs=(str(night),), outdir=str(out), device="cpu")).failed == 0
    assert [p.name for p in out.iterdir()] == ["combined_flat_filter_V.fits"]


def test_streamed_and_whole_products_and_reports_agree(tmp_path, rng):
    """A run writes its product while it combines the group (here in bands); with plots
    the planes stay in memory and the product is written whole. Both give the same
    product and report figures, which are those of the library's combination."""
    import gpuflat

    d = tmp_path / "g"
    d.mkdir()
    stack = flat_stack(rng, n=5, shape=(300, 70))
    stack[:, 10, 3:9] = np.nan  # pixels without any survivor
    for i, a in enumerate(stack):
        write_fits(d / f"flat-{i}.fits", a, IMAGETYP="FLAT", FILTER="V")
    want = gpuflat.combine(sorted(str(p) for p in d.glob("*.fits")))
    limit = 4e5  # bands of 84 rows
    entries = {}
    for name, plots in (("streamed", False), ("whole", True)):
        options = RunOptions(inputs=(str(d),), outdir=str(tmp_path / name), device="cpu",
                             mem_limit=limit, plots=plots)  # fmt: skip
        outcome = run(options)
        assert outcome.failed == 0
        (entries[name],) = outcome.report["groups"]
        assert entries[name]["bands"] == 4
        with fits.open(tmp_path / name / "combined_flat_filter_V.fits") as hdul:
            np.testing.assert_array_equal(hdul[0].data, want.image)
            np.testing.assert_array_equal(hdul["UNCERT"].data, want.uncertainty)
            np.testing.assert_array_equal(hdul["NCOMBINE"].data, want.count)
            np.testing.assert_array_equal(hdul["MASK"].data, want.mask)
    for entry in entries.values():
        assert entry["pixels_without_survivor"] == int(want.mask.sum()) == 6
        assert entry["rejected_fraction"] == float(1 - want.count.mean() / 5)
        assert [f["rejected_fraction"] for f in entry["frames"]] == list(want.rejected_fraction)
