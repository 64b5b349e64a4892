"""Frame QA: per-frame rejected fractions, and frames left out by level or rejection."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import flat_stack, write_fits
from reference import reference_combine

import gpuflat
from gpuflat._qa import QAConfig, outliers
from gpuflat.cli import main


def test_outliers_by_level_and_by_rejection():
    levels = [20000.0, 21000.0, 64000.0, 19000.0, 900.0]
    fractions = [0.002, 0.003, 0.002, 0.2, 0.0025]
    bad = outliers(levels, fractions, QAConfig(level_range=(1000, 50000)))
    assert sorted(bad) == [2, 3, 4]
    assert "64000" in bad[2] and "900" in bad[4] and "20%" in bad[3]
    # the floor: tiny fractions far above a tiny median are not worth a warning
    assert outliers(None, [1e-5, 1e-5, 1e-3], QAConfig()) == {}
    # a smooth trend (a fading twilight sequence) is no outlier, a jump off it is
    # the rejected fractions of the 15 frames of bench/'s simulated twilight sequence W1
    trend = [0.00106, 0.00122, 0.00141, 0.00173, 0.00208, 0.00255, 0.00301, 0.00364]
    trend += [0.00451, 0.00565, 0.00701, 0.00898, 0.01127, 0.01462, 0.01857]
    assert outliers(None, trend, QAConfig()) == {}
    assert list(outliers(None, [*trend[:-1], 0.08], QAConfig())) == [14]
    # with two frames there is no "rest of the group"
    assert outliers(None, [0.001, 0.5], QAConfig()) == {}
    with pytest.raises(ValueError, match="level_range"):
        QAConfig(level_range=(5.0, 1.0))


def test_rejected_fraction_per_frame_matches_reference(tmp_path, rng):
    stack = flat_stack(rng, n=7, shape=(50, 40), outliers=0.02)
    stack[3, ::3] *= 4  # a third of one frame's rows are outliers
    paths = [write_fits(tmp_path / f"f{i}.fits", a) for i, a in enumerate(stack)]
    result = gpuflat.combine(paths, mem_limit=4e4)  # several bands
    assert result.plan.nbands > 1
    flat = stack.reshape(len(stack), -1)
    levels = np.median(flat.astype(np.float64), axis=1)
    *_, rejected = reference_combine(flat, scale=1 / levels, return_rejected=True)
    np.testing.assert_array_equal(result.rejected, rejected)
    np.testing.assert_allclose(result.rejected_fraction, rejected / flat.shape[1])
    assert result.rejected_fraction[3] > 0.3


@pytest.fixture
def group(tmp_path, rng):
    """Five twilight flats of one filter."""
    d = tmp_path / "night"
    d.mkdir()
    stack = flat_stack(rng, n=5, shape=(40, 30), level=20000.0)
    for i, a in enumerate(stack):
        write_fits(d / f"flat-{i}.fits", a, IMAGETYP="FLAT", FILTER="R")
    return d, stack


def _run(d, out, *extra):
    report = out / "report.json"
    code = main(["run", str(d), "-o", str(out), "--report", str(report), *extra])
    return code, json.loads(report.read_text())["groups"][0]


def test_level_range_leaves_out_a_saturated_frame(group, tmp_path, capsys):
    d, stack = group
    saturated = np.minimum(stack[2] * 4, 65535).astype(np.float32)
    (d / "flat-2.fits").unlink()
    write_fits(d / "flat-2.fits", saturated, IMAGETYP="FLAT", FILTER="R")
    code, entry = _run(d, tmp_path / "out", "--level-range", "1000", "60000")
    assert code == 0
    assert "flat-2.fits: left out of group R: level" in capsys.readouterr().err
    kept = [str(d / f"flat-{i}.fits") for i in (0, 1, 3, 4)]
    with fits.open(tmp_path / "out" / "combined_flat_filter_R.fits") as hdul:
        assert hdul[0].header["NCOMBINE"] == 4
        np.testing.assert_array_equal(hdul[0].data, gpuflat.combine(kept).image)
    states = {f["file"].rsplit("/", 1)[-1]: f["qa"] for f in entry["frames"]}
    assert states["flat-2.fits"].startswith("left out: level") and states["flat-0.fits"] == "kept"
    assert entry["frames_left_out"] == 1
    # the product of the first combination (streamed to its temporary) is gone
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "combined_flat_filter_R.fits", "report.json"
    ]  # fmt: skip


def test_a_frame_with_many_rejections_is_left_out_unless_no_qa(group, tmp_path, capsys):
    d, stack = group
    bad = stack[4].copy()
    bad[::2] *= 1.5  # half the frame: a passing cloud edge, say
    (d / "flat-4.fits").unlink()
    write_fits(d / "flat-4.fits", bad, IMAGETYP="FLAT", FILTER="R")
    code, entry = _run(d, tmp_path / "qa")
    err = capsys.readouterr()
    assert code == 0 and "flat-4.fits: left out of group R" in err.err
    assert "(4 of 5 frames, group R)" in err.out
    fractions = {f["file"].rsplit("/", 1)[-1]: f["rejected_fraction"] for f in entry["frames"]}
    assert fractions["flat-4.fits"] > 0.4 and fractions["flat-0.fits"] < 0.05
    with fits.open(tmp_path / "qa" / "combined_flat_filter_R.fits") as hdul:
        assert hdul[0].header["NCOMBINE"] == 4
    code, entry = _run(d, tmp_path / "noqa", "--no-qa")
    assert code == 0 and entry["frames_left_out"] == 0
    with fits.open(tmp_path / "noqa" / "combined_flat_filter_R.fits") as hdul:
        assert hdul[0].header["NCOMBINE"] == 5


def test_qa_leaving_out_every_frame_refuses_the_group(group, tmp_path, capsys):
    d, _ = group
    code, entry = _run(d, tmp_path / "out", "--level-range", "1", "2")
    # refused, and with no master at all, the run's exit code says so
    assert code == 1 and entry["status"].startswith("refused: 0 frames after 5 left out by QA")
    assert "no master written: every group was refused" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*.fits"))


def test_bad_level_range_is_a_usage_error(group, tmp_path, capsys):
    d, _ = group
    assert main(["run", str(d), "-o", str(tmp_path / "o"), "--level-range", "5", "1"]) == 2
    err = capsys.readouterr().err
    assert "--level-range" in err and "Traceback" not in err
    assert main(["run", str(d), "-o", str(tmp_path / "o"), "--qa-reject-factor", "0.5"]) == 2
    assert "--qa-reject-factor must be > 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_level_range_from_the_config_file(group, tmp_path, capsys):
    d, stack = group
    (d / "flat-0.fits").unlink()
    write_fits(d / "flat-0.fits", stack[0] / 100, IMAGETYP="FLAT", FILTER="R")  # too faint
    cfg = tmp_path / "farm.toml"
    cfg.write_text(f'inputs = ["{d}"]\nlevel-range = [1000, 60000]\n')
    assert main(["run", "--config", str(cfg), "-o", str(tmp_path / "out")]) == 0
    assert "flat-0.fits: left out" in capsys.readouterr().err
    cfg.write_text(f'inputs = ["{d}"]\nlevel-range = 1000\n')
    assert main(["run", "--config", str(cfg), "-o", str(tmp_path / "out2")]) == 2


@pytest.fixture
def mosaics(tmp_path):
    """Four two-detector exposures of one filter."""
    from gpuflat._simulate import simulate_night

    d = tmp_path / "mosaics"
    simulate_night(d, shape=(24, 20), n_dome=0, n_twilight=4, mef=2, seed=2)
    return d, sorted(p for p in d.glob("*.fits") if "twiflat" in p.name)


def _mosaic_ncombine(out):
    (product,) = out.glob("*.fits")
    with fits.open(product) as hdul:
        return hdul[0].header["NCOMBINE"], hdul["CCD1"].header["NCOMBINE"]


def test_mosaic_exposure_left_out_by_one_detector_level(mosaics, tmp_path, capsys):
    d, files = mosaics
    with fits.open(files[1], mode="update") as hdul:
        hdul["CCD2"].data *= 8  # saturated on one detector
    code, entry = _run(d, tmp_path / "out", "--level-range", "100", "60000")
    err = capsys.readouterr().err
    assert code == 0 and f"{files[1].name}: left out of group V: extension CCD2: level" in err
    assert _mosaic_ncombine(tmp_path / "out") == (3, 3)
    verdicts = {Path(f["file"]).name: f["qa"] for f in entry["frames"]}
    assert verdicts[files[1].name].startswith("left out") and entry["frames_left_out"] == 1
    assert sum(v == "kept" for v in verdicts.values()) == 3


def test_mosaic_exposure_left_out_by_rejections(mosaics, tmp_path, capsys):
    d, files = mosaics
    with fits.open(files[2], mode="update") as hdul:
        hdul["CCD1"].data[::2] *= 1.5  # half of one detector
    code, entry = _run(d, tmp_path / "qa")
    assert code == 0 and f"{files[2].name}: left out of group V" in capsys.readouterr().err
    fractions = {Path(f["file"]).name: f["rejected_fraction"] for f in entry["frames"]}
    assert fractions[files[2].name] > 0.2  # over both detectors
    assert _mosaic_ncombine(tmp_path / "qa") == (3, 3)
    code, entry = _run(d, tmp_path / "noqa", "--no-qa")
    assert code == 0 and _mosaic_ncombine(tmp_path / "noqa") == (4, 4)


def _descriptors_on(folder):
    """This process's open descriptors on files in ``folder`` (removed ones too)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith(str(folder) + "/"):
            found.append(target)
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_a_qa_redo_closes_the_discarded_product(group, tmp_path, monkeypatch):
    """A frame left out by QA: the first combination's streamed product is discarded, its
    temporary's descriptor closed and its thread ended, before the final product is
    written (when only that one's are open) and after the run (when none is)."""
    import threading

    from gpuflat.farm import RunOptions, run, units

    d, stack = group
    saturated = np.minimum(stack[2] * 4, 65535).astype(np.float32)
    (d / "flat-2.fits").unlink()
    write_fits(d / "flat-2.fits", saturated, IMAGETYP="FLAT", FILTER="R")
    out = tmp_path / "out"
    seen = []
    real = units._write_streamed

    def write_streamed(product, *args, **kwargs):
        threads = [t.name for t in threading.enumerate() if t.name.startswith("gpuflat-product")]
        seen.append((threads, _descriptors_on(out)))
        return real(product, *args, **kwargs)

    monkeypatch.setattr(units, "_write_streamed", write_streamed)
    options = RunOptions(inputs=(str(d),), outdir=str(out), device="cpu",
                         level_range=(1000.0, 60000.0))  # fmt: skip
    outcome = run(options)
    assert outcome.failed == 0
    (entry,) = outcome.report["groups"]
    assert entry["frames_left_out"] == 1 and entry["frames_combined"] == 4
    ((threads, descriptors),) = seen
    assert len(threads) <= 1, threads  # the final product's own
    assert len(descriptors) <= 1, descriptors  # the final product's temporary
    assert _descriptors_on(out) == []
    assert [t.name for t in threading.enumerate() if t.name.startswith("gpuflat-product")] == []
    kept = [str(d / f"flat-{i}.fits") for i in (0, 1, 3, 4)]
    with fits.open(out / "combined_flat_filter_R.fits") as hdul:
        np.testing.assert_array_equal(hdul[0].data, gpuflat.combine(kept).image)
