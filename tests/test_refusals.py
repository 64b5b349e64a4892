"""A master is right or refused (issue 24): a group key the flats lack, product names that
collide, masters taken as flats, saturated frames, groups too small to clip, and the
messages of a run that cannot be done, each through ``gpuflat.cli.main``.

Every run here checks that each product its report says written is on disk, and the
expected masters come from the independent reference (tests/reference.py)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from reference import reference_combine

from gpuflat.cli import main

SHAPE = (16, 16)


def _flats(rng, n, level=1000.0, shape=SHAPE):
    """n float32 flat frames (a vignetted field at drifting levels, with noise)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    optical = 1 - 0.05 * (
        ((yy - shape[0] / 2) / shape[0]) ** 2 + ((xx - shape[1] / 2) / shape[1]) ** 2
    )
    levels = level * rng.uniform(0.8, 1.2, n)
    return (levels[:, None, None] * optical * rng.normal(1, 0.01, (n, *shape))).astype(np.float32)


def _write(path, data, **header):
    hdr = fits.Header()
    for k, v in header.items():
        hdr[k] = v
    fits.PrimaryHDU(data, hdr).writeto(path)
    return path


def _write_uint16(path, data, **header):
    """Unsigned 16-bit data as cameras write them: BITPIX 16, BZERO 32768 (astropy)."""
    hdu = fits.PrimaryHDU(np.asarray(data, np.uint16))
    for k, v in header.items():
        hdu.header[k] = v
    hdu.writeto(path)
    assert fits.getheader(path)["BZERO"] == 32768 and fits.getheader(path)["BITPIX"] == 16
    return path


def _expected(frames):
    """The guide's master of ``frames`` from the reference: 1/median scaling, 5-sigma
    clipping (median centre, MAD width), average."""
    stack = np.asarray(frames, np.float64).reshape(len(frames), -1)
    levels = np.median(stack, axis=1)
    image, _, _ = reference_combine(stack, scale=1 / levels)
    return image.reshape(np.shape(frames)[1:])


def _run(capsys, *argv):
    code = main(["run", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _report(path):
    """The report, after checking that every product it says written is on disk and
    that no temporary is left."""
    report = json.loads(Path(path).read_text())
    for entry in report["groups"]:
        if entry["status"] == "written":
            assert Path(entry["product"]).is_file(), entry
        else:
            assert entry["status"].startswith(("refused: ", "failed: ", "skipped")), entry
        folder = Path(entry["product"]).parent
        assert not list(folder.glob(".*tmp-*")), list(folder.iterdir())
    return report


def _statuses(report):
    return {e["group"]: e["status"] for e in report["groups"]}


# --- 1. a group key the frames lack -----------------------------------------------------


def test_a_group_key_no_flat_has_is_a_usage_error_naming_the_keys_alike(tmp_path, rng, capsys):
    night = tmp_path / "night"
    night.mkdir()
    for filt in ("B", "V"):
        for i, a in enumerate(_flats(rng, 3)):
            # NOT/ALFOSC: the filter in FAFLTNM, two wheels beside it
            _write(night / f"f-{filt}-{i}.fits", a, IMAGETYP="FLAT", FAFLTNM=filt,
                   ALFLTNM="Open", FBFLTNM="Open")  # fmt: skip
    out = tmp_path / "out"
    code, _, err = _run(capsys, night, "-o", out, "--report", tmp_path / "r.json")
    assert code == 2 and err.count("\n") == 1, err
    assert "FILTER" in err and "FAFLTNM" in err and "ALFLTNM" in err and "--filter-key" in err
    assert not out.exists() or not list(out.iterdir())  # nothing merged into group ''
    code, _, err = _run(capsys, night, "-o", out, "--group-by", "FAFLTNM,FILTR")
    assert code == 2 and "FILTR" in err and "FAFLTNM" in err
    # the filter keyword named: one master per filter, each from its own three frames
    code, out_text, err = _run(
        capsys, night, "-o", out, "--filter-key", "fafltnm", "--report", tmp_path / "r.json"
    )
    assert code == 0, err
    report = _report(tmp_path / "r.json")
    assert _statuses(report) == {"B": "written", "V": "written"}
    *products, summary = out_text.splitlines()
    printed = [line.split()[0] for line in products]  # the products written
    assert printed == [e["product"] for e in report["groups"]]
    assert summary.startswith("2 master(s) written, 0 skipped (exist), 0 refused, 0 failed, in")
    for filt in ("B", "V"):
        frames = [fits.getdata(night / f"f-{filt}-{i}.fits") for i in range(3)]
        data = fits.getdata(out / f"combined_flat_filter_{filt}.fits")
        np.testing.assert_allclose(data, _expected(frames), rtol=1e-6)


def test_a_frame_without_the_key_is_left_out_or_its_own_group(tmp_path, rng, capsys):
    night = tmp_path / "night"
    night.mkdir()
    stack = _flats(rng, 4)
    for i, a in enumerate(stack[:3]):
        _write(night / f"f-{i}.fits", a, IMAGETYP="FLAT", FILTER="R")
    _write(night / "stray.fits", stack[3], IMAGETYP="FLAT")  # no FILTER
    out, report = tmp_path / "out", tmp_path / "r.json"
    code, _, err = _run(capsys, night, "-o", out, "--report", report)
    assert code == 0, err
    assert "stray.fits: left out: no FILTER keyword" in err
    entries = _report(report)["groups"]
    assert [(e["group"], e["status"]) for e in entries] == [("R", "written")]
    assert len(entries[0]["files"]) == 3 and "stray" not in " ".join(entries[0]["files"])
    np.testing.assert_allclose(
        fits.getdata(out / "combined_flat_filter_R.fits"), _expected(stack[:3]), rtol=1e-6
    )
    # --allow-missing-key: a group of its own (here of one frame: --min-frames 1)
    code, _, err = _run(
        capsys, night, "-o", out, "--report", report, "--allow-missing-key", "--min-frames", "1",
    )  # fmt: skip
    assert code == 0, err
    statuses = _statuses(_report(report))
    assert statuses == {"''": "written", "R": "skipped (exists)"}
    alone = fits.getdata(out / "combined_flat_filter_none.fits")
    np.testing.assert_allclose(alone, stack[3] / np.median(stack[3].astype(np.float64)), rtol=1e-6)


# --- 2. product names that collide ------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [("g''", "gp"), ("r'", "r?")])
def test_groups_of_one_product_name_are_refused_before_any_work(tmp_path, rng, capsys, a, b):
    night = tmp_path / "night"
    night.mkdir()
    for k, filt in enumerate((a, b)):
        for i, f in enumerate(_flats(rng, 3)):
            _write(night / f"f{k}-{i}.fits", f, IMAGETYP="FLAT", FILTER=filt)
    out = tmp_path / "out"
    code, _, err = _run(capsys, night, "-o", out, "--report", tmp_path / "r.json")
    assert code == 2 and err.count("\n") == 1, err
    assert f"'{a}'" in err and f"'{b}'" in err and "--group-by" in err
    assert not (tmp_path / "r.json").exists() and not (out.exists() and list(out.iterdir()))
    # inspect says it too
    assert main(["inspect", str(night)]) == 2
    text = capsys.readouterr().out
    assert "run would refuse" in text and f"'{a}'" in text and f"'{b}'" in text
    # selecting one of them is a way out
    code, _, err = _run(capsys, night, "-o", out, "--where", f"FILTER={b}", "--report",
                        tmp_path / "r.json")  # fmt: skip
    assert code == 0, err
    (entry,) = _report(tmp_path / "r.json")["groups"]
    assert entry["status"] == "written" and entry["group"] == b


def test_temporaries_are_never_shared(tmp_path):
    from gpuflat import _atomic
    from gpuflat.errors import GpuflatError
    from gpuflat.farm.units import Writer

    target = tmp_path / "p.fits"
    names = {_atomic.temporary_name(target) for _ in range(3)}
    assert len(names) == 3 and all(target.name in n.name for n in names)
    writer = Writer()
    try:
        release = __import__("threading").Event()
        writer(target, {}, lambda defer: (release.wait(5), lambda: None)[1])
        with pytest.raises(GpuflatError, match="another group of this run writes"):
            writer(target, {}, lambda defer: lambda: None)
    finally:
        release.set()
        writer.close()


# --- 3. masters are never combined again -------------------------------------------------


def test_masters_in_the_inputs_are_never_taken_as_flats(tmp_path, rng, capsys):
    night = tmp_path / "night"
    night.mkdir()
    stack = _flats(rng, 3)
    for i, a in enumerate(stack):
        _write(night / f"f-{i}.fits", a, IMAGETYP="Flat Field", FILTER="V")
    # a ccdproc master of the guide (COMBINED = T), and gpuflat's own, in the same folder
    _write(night / "ccdproc_master.fits", stack[0], IMAGETYP="Flat Field", FILTER="V",
           COMBINED=True)  # fmt: skip
    code, _, err = _run(capsys, night, "-o", night)  # the products go among the flats
    assert code == 0, err
    product = night / "combined_flat_filter_V.fits"
    header = fits.getheader(product)
    # the guide's next notebook selects imagetyp='flat field', combined=True: kept
    assert header["IMAGETYP"] == "Flat Field" and header["COMBINED"] is True
    code, _, err = _run(capsys, night, "-o", night, "--overwrite", "-v", "--report",
                        tmp_path / "r.json")  # fmt: skip
    assert code == 0, err
    assert "2 combined master(s) among the inputs (COMBINED = T) not used" in err
    (entry,) = _report(tmp_path / "r.json")["groups"]
    assert sorted(Path(f).name for f in entry["files"]) == ["f-0.fits", "f-1.fits", "f-2.fits"]
    assert fits.getheader(product)["NCOMBINE"] == 3
    np.testing.assert_allclose(fits.getdata(product), _expected(stack), rtol=1e-6)


# --- 4. saturated frames -----------------------------------------------------------------


def test_a_saturated_frame_is_left_out_whatever_the_group_size(tmp_path, rng, capsys):
    night = tmp_path / "night"
    night.mkdir()
    good = np.round(_flats(rng, 3, level=20000.0))
    for i, a in enumerate(good):
        _write_uint16(night / f"f-{i}.fits", a, IMAGETYP="FLAT", FILTER="R", EXPTIME=1.0)
    sat = np.full(SHAPE, 65535.0)
    sat[:2] = 60000  # a few pixels below the top
    _write_uint16(night / "f-sat.fits", sat, IMAGETYP="FLAT", FILTER="R", EXPTIME=9.0)
    out, report = tmp_path / "out", tmp_path / "r.json"
    code, _, err = _run(capsys, night, "-o", out, "--report", report)
    assert code == 0, err
    assert "f-sat.fits: left out of group R: saturated" in err
    (entry,) = _report(report)["groups"]
    assert entry["frames_combined"] == 3 and entry["frames_left_out"] == 1
    np.testing.assert_allclose(
        fits.getdata(out / "combined_flat_filter_R.fits"), _expected(good), rtol=1e-6
    )
    # a group of one good frame and the saturated one: a master of the good frame only
    code, _, err = _run(capsys, night / "f-0.fits", night / "f-sat.fits", "-o", tmp_path / "two",
                        "--min-frames", "1", "--report", report)  # fmt: skip
    assert code == 0 and "saturated" in err, err
    (entry,) = _report(report)["groups"]
    assert entry["frames_combined"] == 1
    np.testing.assert_allclose(
        fits.getdata(tmp_path / "two" / "combined_flat_filter_R.fits"),
        good[0] / np.median(good[0].astype(np.float64)), rtol=1e-6,
    )  # fmt: skip
    # the saturated frame alone in its group (by exposure time) is no master
    code, _, err = _run(capsys, night, "-o", tmp_path / "byexp", "--group-by", "FILTER,EXPTIME",
                        "--min-frames", "1", "--report", report)  # fmt: skip
    entries = {e["group"]: e for e in _report(report)["groups"]}
    assert entries["R,9.0"]["status"].startswith("refused: 0 frames after 1 left out by QA")
    assert entries["R,9.0"]["frames"][0]["qa"].startswith("left out: saturated")
    assert "saturated" in err and not (tmp_path / "byexp/combined_flat_filter_R_9.0.fits").exists()


def test_saturate_keyword_of_float_data(tmp_path, rng, capsys):
    night = tmp_path / "night"
    night.mkdir()
    stack = _flats(rng, 4, level=30000.0)
    stack[2] = 52000.0  # float data: saturated by the header's SATURATE = 50000
    for i, a in enumerate(stack):
        _write(night / f"f-{i}.fits", a, IMAGETYP="FLAT", FILTER="V", SATURATE=50000)
    code, _, err = _run(capsys, night, "-o", tmp_path / "out", "--report", tmp_path / "r.json")
    assert code == 0, err
    assert "f-2.fits: left out of group V: saturated" in err and "SATURATE = 50000" in err
    assert _report(tmp_path / "r.json")["groups"][0]["frames_combined"] == 3
    np.testing.assert_allclose(
        fits.getdata(tmp_path / "out" / "combined_flat_filter_V.fits"),
        _expected(stack[[0, 1, 3]]), rtol=1e-6,
    )  # fmt: skip


# --- 5. groups too small, stray shapes -----------------------------------------------------


def test_groups_of_fewer_than_min_frames_are_refused(tmp_path, rng, capsys):
    night = tmp_path / "night"
    night.mkdir()
    stack = _flats(rng, 6)
    for i, a in enumerate(stack[:4]):
        _write(night / f"f-V-{i}.fits", a, IMAGETYP="FLAT", FILTER="V")
    _write(night / "f-B-0.fits", stack[4], IMAGETYP="FLAT", FILTER="B")
    # a stray frame of another shape among the V flats: the V master keeps its name
    _write(night / "f-V-odd.fits", _flats(rng, 1, shape=(16, 20))[0], IMAGETYP="FLAT", FILTER="V")
    out, report = tmp_path / "out", tmp_path / "r.json"
    code, _, err = _run(capsys, night, "-o", out, "--report", report)
    assert code == 0, err
    statuses = _statuses(_report(report))
    assert statuses == {
        "B": "refused: 1 frame, fewer than --min-frames 3",
        "V": "written",
        "V [16x20 bin 1x1]": "refused: 1 frame, fewer than --min-frames 3",
    }
    assert "group B refused: 1 frame, fewer than --min-frames 3" in err
    assert sorted(p.name for p in out.iterdir()) == ["combined_flat_filter_V.fits"]
    np.testing.assert_allclose(
        fits.getdata(out / "combined_flat_filter_V.fits"), _expected(stack[:4]), rtol=1e-6
    )
    # --min-frames 1: today's behaviour, every group a master
    code, _, err = _run(capsys, night, "-o", out, "--report", report, "--min-frames", "1")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "combined_flat_filter_B.fits",
        "combined_flat_filter_V.fits",
        "combined_flat_filter_V_16x20_bin1x1.fits",
    ]
    _report(report)
    # nothing but refused groups: no master at all is an error
    code, _, err = _run(capsys, night / "f-B-0.fits", "-o", tmp_path / "none")
    assert code == 1 and "no master written: every group was refused" in err


# --- 6. inspect --all -------------------------------------------------------------------


def test_inspect_all_lists_the_frames_not_selected(tmp_path, rng, capsys):
    night = tmp_path / "night"
    night.mkdir()
    for i, a in enumerate(_flats(rng, 3)):
        _write(night / f"f-{i}.fits", a, IMAGETYP="FLAT", FILTER="V")
    _write(night / "bias.fits", np.zeros(SHAPE, np.float32), IMAGETYP="BIAS")
    assert main(["inspect", str(night)]) == 0
    assert "bias.fits" not in capsys.readouterr().out
    assert main(["inspect", str(night), "--all"]) == 0
    out = capsys.readouterr().out
    assert "bias.fits" in out and "f-0.fits" in out and "1 group(s)" in out


# --- 9. messages --------------------------------------------------------------------------


def test_no_flats_says_what_was_seen_and_what_removed_them(tmp_path, rng, capsys):
    night = tmp_path / "night"
    night.mkdir()
    stack = _flats(rng, 3)
    for i, a in enumerate(stack):
        _write(night / f"f-{i}.fits", a, OBSTYPE="FLAT", FILTER="V")  # no IMAGETYP
    _write(night / "bias.fits", stack[0], OBSTYPE="BIAS")
    code, _, err = _run(capsys, night, "-o", tmp_path / "out")
    assert code == 1 and "no flat frames among 4 file(s)" in err
    assert "(no IMAGETYP) x4" in err and "OBSTYPE (4 frames: 'FLAT', 'BIAS')" in err
    assert "--imagetyp-key" in err
    code, _, err = _run(capsys, night, "-o", tmp_path / "out", "--imagetyp-key", "OBSTYPE",
                        "--where", "FILTER=B")  # fmt: skip
    assert code == 1 and "3 frame(s) have OBSTYPE containing 'flat'" in err
    assert "--where FILTER=B removed every one" in err
    code, _, err = _run(capsys, night, "-o", tmp_path / "out", "--imagetyp-key", "obstype",
                        "--imagetyp", "dark")  # fmt: skip
    assert code == 1 and "none has OBSTYPE 'dark' (--imagetyp)" in err
    assert "OBSTYPE values seen: 'FLAT' x3, 'BIAS' x1" in err
    code, _, err = _run(capsys, night, "-o", tmp_path / "out", "--imagetyp-key", "OBSTYPE",
                        "--report", tmp_path / "r.json")  # fmt: skip
    assert code == 0, err
    assert _statuses(_report(tmp_path / "r.json")) == {"V": "written"}


def test_a_misspelled_flag_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "night", "--metod", "median"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "did you mean --method?" in err and "gpuflat run" in err.splitlines()[0]
    with pytest.raises(SystemExit):
        main(["inspect", "night", "--alll"])
    assert "did you mean --all?" in capsys.readouterr().err


def test_every_unreadable_input_is_reported_before_any_work(tmp_path, rng, capsys, monkeypatch):
    import gpuflat.farm.units as units

    night = tmp_path / "night"
    night.mkdir()
    for filt in ("B", "V"):
        for i, a in enumerate(_flats(rng, 4)):
            _write(night / f"f-{filt}-{i}.fits", a, IMAGETYP="FLAT", FILTER=filt)
    for name in ("f-B-0.fits", "f-B-1.fits", "f-V-2.fits"):
        (night / name).write_bytes((night / name).read_bytes()[:-2000])
    (night / "garbage.fits").write_bytes(b"SIMPLE  = garbage")
    out, report = tmp_path / "out", tmp_path / "r.json"
    code, _, err = _run(capsys, night, "-o", out, "--report", report)
    assert code == 1
    head = err.splitlines()[:4]  # all four, first of all
    for name in ("f-B-0.fits", "f-B-1.fits", "f-V-2.fits", "garbage.fits"):
        assert sum(name in line and ("unreadable" in line or "truncated" in line)
                   for line in head) == 1, err  # fmt: skip
    statuses = _statuses(_report(report))
    assert statuses["B"].startswith("failed: unreadable frame(s)")
    assert "f-B-0.fits" in statuses["B"] and "f-B-1.fits" in statuses["B"]
    # --skip-bad: left out; B keeps 2 frames (refused), V 3
    code, _, err = _run(capsys, night, "-o", out, "--report", report, "--skip-bad")
    statuses = _statuses(_report(report))
    assert code == 0, err
    assert statuses == {
        "B": "refused: 2 frames after 2 left out as unreadable, fewer than --min-frames 3",
        "V": "written",
    }
    # a folder that takes no files: said before any combination
    monkeypatch.setattr(units, "group_unit", lambda *a, **k: pytest.fail("combined"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = _run(capsys, night, "-o", blocker / "sub", "--skip-bad", "-q")
    assert (
        code == 2 and err.count("\n") == 1 and f"--outdir {blocker / 'sub'}" in err.splitlines()[-1]
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a read-only folder")
def test_a_read_only_output_folder_is_said_before_any_work(tmp_path, rng, capsys, monkeypatch):
    import gpuflat.farm.units as units

    night = tmp_path / "night"
    night.mkdir()
    for i, a in enumerate(_flats(rng, 3)):
        _write(night / f"f-{i}.fits", a, IMAGETYP="FLAT", FILTER="V")
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    monkeypatch.setattr(units, "group_unit", lambda *a, **k: pytest.fail("combined"))
    try:
        code, _, err = _run(capsys, night, "-o", out)
    finally:
        out.chmod(0o755)
    assert code == 2 and f"--outdir {out}: cannot write in {out}" in err and ".tmp" not in err


def test_an_output_folder_refusing_files_is_said_before_any_work(tmp_path, rng, capsys,
                                                                  monkeypatch):  # fmt: skip
    """As root too: a probe file that cannot be created (read-only folder, full disk)."""
    import tempfile

    import gpuflat.farm.units as units

    night = tmp_path / "night"
    night.mkdir()
    for i, a in enumerate(_flats(rng, 3)):
        _write(night / f"f-{i}.fits", a, IMAGETYP="FLAT", FILTER="V")
    out = tmp_path / "out"

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(units, "group_unit", lambda *a, **k: pytest.fail("combined"))
    code, _, err = _run(capsys, night, "-o", out)
    assert (
        code == 2
        and err
        == f"gpuflat run: error: --outdir {out}: cannot write in {out} (Permission denied)\n"
    )


# --- 11. @list files ------------------------------------------------------------------------


def test_list_entries_are_relative_to_the_current_folder(tmp_path, rng, capsys, monkeypatch):
    night = tmp_path / "night"
    night.mkdir()
    for i, a in enumerate(_flats(rng, 3)):
        _write(night / f"f-{i}.fits", a, IMAGETYP="FLAT", FILTER="V")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "flats.txt").write_text(
        "# IRAF style\nnight/f-0.fits\nnight/f-1.fits\nnight/f-2.fits\n"
    )
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, "@lists/flats.txt", "-o", "out", "--report", "r.json")
    assert code == 0, err
    (entry,) = _report(tmp_path / "r.json")["groups"]
    assert entry["files"] == [f"night/f-{i}.fits" for i in range(3)]
    # entries relative to the list file's folder are not found, with a hint
    (night / "here.txt").write_text("f-0.fits\n")
    code, _, err = _run(capsys, "@night/here.txt", "-o", "out")
    assert code == 2 and "f-0.fits: no such file" in err and "relative to the current folder" in err
    assert "night/f-0.fits exists" in err
    # documented
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "relative to the current folder" in " ".join(capsys.readouterr().out.split())


def test_the_new_options_in_a_config_file(tmp_path):
    from gpuflat.farm import OptionError
    from gpuflat.farm.options import build_options

    cfg = tmp_path / "farm.toml"
    cfg.write_text('filter-key = "filtnam"\nimagetyp_key = "OBSTYPE"\nmin-frames = 5\n'
                   "allow-missing-key = true\n")  # fmt: skip
    opts = build_options({}, str(cfg))
    assert (opts.filter_key, opts.group_keys, opts.imagetyp_key) == (
        "FILTNAM",
        ("FILTNAM",),
        "OBSTYPE",
    )
    assert opts.min_frames == 5 and opts.allow_missing_key is True
    # --group-by still wins over the filter keyword; a flag over the file
    opts = build_options({"group_by": "FILTER,EXPTIME", "min_frames": 1}, str(cfg))
    assert opts.group_keys == ("FILTER", "EXPTIME") and opts.min_frames == 1
    cfg.write_text("min-frames = 0\n")
    with pytest.raises(OptionError, match="min-frames: expected an integer >= 1"):
        build_options({}, str(cfg))
    with pytest.raises(OptionError, match="--filter-key 'A,B': expected one header key"):
        build_options({"filter_key": "A,B"})


def test_saturation_limits_from_headers():
    from gpuflat._qa import saturation_limit

    def limit(**cards):
        return saturation_limit(fits.Header(list(cards.items())))

    assert limit(BITPIX=16, BZERO=32768)[0] == pytest.approx(0.95 * 65535)  # unsigned 16-bit
    assert limit(BITPIX=16)[0] == pytest.approx(0.95 * 32767)  # signed 16-bit
    assert limit(BITPIX=8)[0] == pytest.approx(0.95 * 255)
    assert limit(BITPIX=-32) is None  # float data say nothing of the converter
    assert limit(BITPIX=-32, SATURATE=50000)[0] == 50000
    assert limit(BITPIX=16, BZERO=32768, SATURATE=40000) == (40000, "SATURATE = 40000")
    assert limit(BITPIX=16, BZERO=32768, SATURATE=1e6)[0] == pytest.approx(0.95 * 65535)
    with_gain = saturation_limit(fits.Header([("BITPIX", -32), ("SATURATE", 1000)]), gain=2.0)
    assert with_gain[0] == 2000 and "gain 2" in with_gain[1]


def test_an_output_named_like_a_file_is_refused_with_a_hint(tmp_path, rng, capsys):
    """-o master.fits: -o is a folder (one master per group); nothing is made."""
    for i, a in enumerate(_flats(rng, 3)):
        _write(tmp_path / f"f-{i}.fits", a, IMAGETYP="FLAT", FILTER="V")
    out = tmp_path / "master.fits"
    code, _, err = _run(capsys, tmp_path, "-o", out)
    assert code == 2 and err.count("\n") == 1, err
    assert f"--outdir {out}" in err and "folder" in err and "-o masters/" in err
    assert not out.exists()
