"""Tests written against planted one-line bugs (issue 24, item 12) for the modules that have
no test file of their own: each passes on the code as it is and fails with its bug."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from astropy.io import fits
from conftest import flat_stack, write_fits

from gpuflat import _atomic
from gpuflat.farm import RunOptions, run


def test_a_run_whose_groups_grow_lends_each_big_enough_result_buffers(tmp_path, rng):
    """gpuflat._memory.Workspace.results: three streamed groups, each larger than the one
    before (so the third reuses the first's buffer, too small for it): every product is the
    library's combination of its group."""
    import gpuflat

    d = tmp_path / "night"
    d.mkdir()
    shapes = {"B": (8, 20), "R": (19, 20), "V": (33, 20)}  # run in this order
    for filt, shape in shapes.items():
        for i, frame in enumerate(flat_stack(rng, n=5, shape=shape)):
            write_fits(d / f"flat-{filt}-{i}.fits", frame, IMAGETYP="FLAT", FILTER=filt)
    out = tmp_path / "o"
    outcome = run(RunOptions(inputs=(str(d),), outdir=str(out), device="cpu", no_qa=True))
    assert outcome.failed == 0
    for filt, shape in shapes.items():
        want = gpuflat.combine(sorted(str(p) for p in d.glob(f"flat-{filt}-*.fits")))
        with fits.open(out / f"combined_flat_filter_{filt}.fits", checksum=True) as hdul:
            assert hdul[0].data.shape == shape
            np.testing.assert_array_equal(hdul[0].data, want.image)
            np.testing.assert_array_equal(hdul["UNCERT"].data, want.uncertainty)
            np.testing.assert_array_equal(hdul["NCOMBINE"].data, want.count)
            np.testing.assert_array_equal(hdul["MASK"].data, (want.count == 0).astype(np.uint8))


@pytest.fixture
def fsyncs(monkeypatch):
    """What os.fsync is called on, in order: ("fsync", is a directory, (st_dev, st_ino));
    and the moves into place: ("link" / "replace", source, target)."""
    events = []
    real_fsync, real_link, real_replace = os.fsync, os.link, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", stat.S_ISDIR(st.st_mode), (st.st_dev, st.st_ino)))
        return real_fsync(fd)

    def link(src, dst, *args, **kwargs):
        real_link(src, dst, *args, **kwargs)
        events.append(("link", str(src), str(dst)))

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        events.append(("replace", str(src), str(dst)))

    monkeypatch.setattr(_atomic.os, "fsync", fsync)
    monkeypatch.setattr(_atomic.os, "link", link)
    monkeypatch.setattr(_atomic.os, "replace", replace)
    return events


def _ident(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_durable_commit_fsyncs_the_file_and_its_directory(tmp_path, fsyncs, overwrite):
    """gpuflat._atomic.fsync: the file written (the same inode as the committed one: a link
    or a rename) and the directory that holds it are both fsynced."""
    target = tmp_path / "out" / "product.fits"
    target.parent.mkdir()
    if overwrite:
        target.write_bytes(b"old")
    _atomic.commit(target, lambda tmp: tmp.write_bytes(b"new bytes"), overwrite=overwrite,
                   durable=True)  # fmt: skip
    assert target.read_bytes() == b"new bytes"
    synced = [(is_dir, ident) for what, is_dir, ident in fsyncs if what == "fsync"]
    assert (False, _ident(target)) in synced, fsyncs
    assert (True, _ident(target.parent)) in synced, fsyncs
    # nothing durable asked, nothing synced
    fsyncs.clear()
    _atomic.commit(tmp_path / "out" / "other", lambda tmp: tmp.write_bytes(b"x"))
    assert [e for e in fsyncs if e[0] == "fsync"] == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_the_directory_is_fsynced_after_the_move_into_place(tmp_path, fsyncs, overwrite):
    """The committed name's own directory entry is made durable: a crash just after commit
    returns never loses the product that the report calls written."""
    target = tmp_path / "product.fits"
    _atomic.commit(target, lambda tmp: tmp.write_bytes(b"new bytes"), overwrite=overwrite,
                   durable=True)  # fmt: skip
    moved = [i for i, e in enumerate(fsyncs) if e[0] in ("link", "replace")]
    assert len(moved) == 1 and fsyncs[moved[0]][2] == str(target)
    dir_syncs = [
        i for i, e in enumerate(fsyncs)
        if e[0] == "fsync" and e[1] and e[2] == _ident(target.parent)
    ]  # fmt: skip
    assert dir_syncs and max(dir_syncs) > moved[0], fsyncs
