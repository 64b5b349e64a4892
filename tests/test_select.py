"""Header-only selection and grouping (gpuflat._select), and the batch job's select()."""

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import write_fits

from gpuflat._select import expand_inputs, group_frames, is_selected, read_info
from gpuflat.farm import OptionError, RunOptions, select


def _frame(path, shape=(8, 6), **header):
    return write_fits(path, np.ones(shape, np.float32), **header)


def test_binning_from_ccdsum_is_x_then_y(tmp_path):
    """CCDSUM '1 2' is x binning 1, y binning 2, as XBINNING/YBINNING say."""
    a = read_info(Path(_frame(tmp_path / "a.fits", IMAGETYP="FLAT", FILTER="V", CCDSUM="1 2")))
    b = read_info(
        Path(_frame(tmp_path / "b.fits", IMAGETYP="FLAT", FILTER="V", XBINNING=1, YBINNING=2))
    )
    c = read_info(Path(_frame(tmp_path / "c.fits", IMAGETYP="FLAT", FILTER="V", CCDSUM="2 1")))
    assert a.binning == b.binning == (1, 2) and c.binning == (2, 1)
    groups = group_frames([a, b, c], ("FILTER",))
    assert sorted(len(g.frames) for g in groups) == [1, 2]  # a and b together, c apart
    apart = next(g for g in groups if len(g.frames) == 1)
    assert apart.split and "bin 2x1" in apart.label() and "_bin2x1" in apart.product_name()


def test_selection_by_imagetyp_and_where(tmp_path):
    infos = [
        read_info(Path(_frame(tmp_path / f"{i}.fits", IMAGETYP=t, FILTER=f, EXPTIME=e)))
        for i, (t, f, e) in enumerate(
            [("Flat Field", "V", 2.0), ("SKYFLAT", "B", 3), ("bias", "V", 0), ("LIGHT", "V", 9)]
        )
    ]
    assert [is_selected(i) for i in infos] == [True, True, False, False]
    assert [is_selected(i, imagetyp=["flat field"]) for i in infos] == [True, False, False, False]
    assert [is_selected(i, where=[("EXPTIME", "3.0")]) for i in infos] == [
        False,
        True,
        False,
        False,
    ]
    assert [is_selected(i, where=[("FILTER", "v")]) for i in infos] == [True, False, False, False]


def test_group_by_several_keys_and_shapes(tmp_path):
    paths = [
        _frame(tmp_path / "a.fits", IMAGETYP="FLAT", FILTER="V", EXPTIME=1),
        _frame(tmp_path / "b.fits", IMAGETYP="FLAT", FILTER="V", EXPTIME=2),
        _frame(tmp_path / "c.fits", IMAGETYP="FLAT", FILTER="V", EXPTIME=2),
        _frame(tmp_path / "d.fits", (10, 6), IMAGETYP="FLAT", FILTER="V", EXPTIME=2),
    ]
    infos = [read_info(Path(p)) for p in paths]
    groups = group_frames(infos, ("FILTER", "EXPTIME"))
    # the majority keeps the plain name, the minority's says its shape
    assert [(g.key, len(g.frames), g.split) for g in groups] == [
        (("V", "1"), 1, False),
        (("V", "2"), 2, False),
        (("V", "2"), 1, True),
    ]
    assert [g.product_name() for g in groups] == [
        "combined_flat_filter_V_1.fits",
        "combined_flat_filter_V_2.fits",
        "combined_flat_filter_V_2_10x6_bin1x1.fits",
    ]
    # a tie: both names say their shape
    e = read_info(
        Path(_frame(tmp_path / "e.fits", (10, 6), IMAGETYP="FLAT", FILTER="V", EXPTIME=2))
    )
    groups = group_frames([*infos[1:], e], ("FILTER", "EXPTIME"))
    assert [g.product_name() for g in groups] == [
        "combined_flat_filter_V_2_8x6_bin1x1.fits",
        "combined_flat_filter_V_2_10x6_bin1x1.fits",
    ]


def test_expand_inputs_dirs_globs_lists_and_missing(tmp_path, monkeypatch):
    d = tmp_path / "night"
    (d / "sub").mkdir(parents=True)
    a = _frame(d / "a.fits", IMAGETYP="FLAT")
    b = _frame(d / "sub" / "b.fit", IMAGETYP="FLAT")
    (d / "notes.txt").write_text("not a frame")
    listfile = tmp_path / "list.txt"
    listfile.write_text("# comment\nnight/a.fits\n\nnight/sub/b.fit\n")
    paths, missing = expand_inputs([str(d)])
    assert [str(p) for p in paths] == [a] and not missing
    paths, _ = expand_inputs([str(d)], recursive=True)
    assert sorted(map(str, paths)) == sorted([a, b])
    monkeypatch.chdir(tmp_path)  # @list entries are relative to the current folder
    paths, _ = expand_inputs([f"@{listfile}", a])  # duplicates are dropped
    assert [str(p) for p in paths] == ["night/a.fits", "night/sub/b.fit"]
    _, missing = expand_inputs([str(tmp_path / "nope"), str(tmp_path / "*.none"), "@x.txt"])
    assert len(missing) == 3


def test_select_validates_options_once(tmp_path):
    _frame(tmp_path / "a.fits", IMAGETYP="FLAT", FILTER="V")
    found = select(RunOptions(inputs=(str(tmp_path),)))
    assert [g.label() for g in found.groups] == ["V"] and not found.unreadable
    with pytest.raises(OptionError, match="--where 'FILTER': expected KEY=VALUE"):
        RunOptions(inputs=("x",), where=("FILTER",))
    with pytest.raises(OptionError, match="--group-by needs at least one header key"):
        RunOptions(inputs=("x",), group_by=" , ")
    with pytest.raises(OptionError, match="no such file or directory"):
        select(RunOptions(inputs=(str(tmp_path / "nope"),)))


def test_unreadable_header_is_listed(tmp_path):
    (tmp_path / "bad.fits").write_bytes(b"SIMPLE  = garbage")
    _frame(tmp_path / "a.fits", IMAGETYP="FLAT", FILTER="V")
    found = select(RunOptions(inputs=(str(tmp_path),)))
    assert [p.name for p, _ in found.unreadable] == ["bad.fits"]
    hdr = fits.getheader(tmp_path / "a.fits")
    assert hdr["IMAGETYP"] == "FLAT"


def test_an_empty_group_value_names_the_product_none(tmp_path):
    """FILTER = '' (and no FILTER at all, read as ''): combined_flat_filter_none.fits, as
    does a value of dots only; with two keys, the empty one is 'none' in its place."""
    paths = [
        _frame(tmp_path / "a.fits", IMAGETYP="FLAT", FILTER=""),
        _frame(tmp_path / "b.fits", IMAGETYP="FLAT"),
        _frame(tmp_path / "c.fits", IMAGETYP="FLAT", FILTER="..", EXPTIME=3),
    ]
    infos = [read_info(Path(p)) for p in paths]
    (group,) = group_frames(infos[:2], ("FILTER",))
    assert group.key == ("",) and len(group.frames) == 2
    assert group.product_name() == "combined_flat_filter_none.fits"
    (dots,) = group_frames(infos[2:], ("FILTER",))
    assert dots.product_name() == "combined_flat_filter_none.fits"
    names = sorted(g.product_name() for g in group_frames(infos, ("EXPTIME", "FILTER")))
    assert names == ["combined_flat_filter_3_none.fits", "combined_flat_filter_none_none.fits"]
