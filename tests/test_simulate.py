"""Tests of the simulated night (gpuflat._simulate)."""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData

from gpuflat._simulate import detector_defects, flat_field_truth, simulate_night

SHAPE = (160, 240)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A small float32 night, written once for the module."""
    outdir = tmp_path_factory.mktemp("night")
    calls = []
    paths = simulate_night(outdir, shape=SHAPE, seed=3, progress=lambda d, t: calls.append((d, t)))
    return outdir, paths, calls


def _headers(paths):
    return {p.name: fits.getheader(p) for p in paths}


def _median(path):
    return float(np.median(fits.getdata(path)))


def test_files_written_and_named(night):
    outdir, paths, _ = night
    names = [p.name for p in paths]
    expected = (
        [f"bias-{i:03d}.fits" for i in (1, 2, 3)]
        + [f"dark-{i:03d}.fits" for i in (1, 2)]
        + [f"flat-gpp-{i:03d}.fits" for i in range(1, 6)]
        + [f"flat-rpp-{i:03d}.fits" for i in range(1, 6)]
        + [f"twiflat-V-{i:03d}.fits" for i in range(1, 8)]
        + [f"light-{i:03d}.fits" for i in (1, 2)]
    )
    assert names == expected
    assert all(p.parent == outdir and p.is_file() for p in paths)
    # Nothing else (no temporary files) is left in the directory.
    assert sorted(p.name for p in outdir.iterdir()) == sorted(expected)


def test_progress_called_after_each_file(night):
    _, paths, calls = night
    n = len(paths)
    assert calls == [(i, n) for i in range(1, n + 1)]


def test_readable_by_ccddata(night):
    _, paths, _ = night
    for path in paths:
        ccd = CCDData.read(path)
        assert ccd.unit == u.adu
        assert ccd.shape == SHAPE
        assert ccd.data.dtype.kind == "f"
        assert ccd.data.dtype.itemsize == 4
        assert np.all(np.isfinite(ccd.data))


def test_headers(night):
    _, paths, _ = night
    headers = _headers(paths)
    types = {name: h["IMAGETYP"] for name, h in headers.items()}
    assert {types[n] for n in types if n.startswith("bias")} == {"BIAS"}
    assert {types[n] for n in types if n.startswith("dark")} == {"DARK"}
    assert {types[n] for n in types if n.startswith("flat-")} == {"flatfield"}
    assert {types[n] for n in types if n.startswith("twiflat")} == {"FLAT"}
    assert {types[n] for n in types if n.startswith("light")} == {"LIGHT"}

    dates = []
    for name, h in headers.items():
        assert h["INSTRUME"] == "gpuflat-sim"
        assert h["BUNIT"] == "adu"
        assert h["XBINNING"] == 1
        assert h["YBINNING"] == 1
        assert isinstance(h["EXPTIME"], float)
        assert h["BITPIX"] == -32
        dates.append(dt.datetime.fromisoformat(h["DATE-OBS"]))
        if name.startswith(("flat", "twiflat", "light")):
            assert "FILTER" in h
        else:
            assert "FILTER" not in h
        if name.startswith("light"):
            assert h["OBJECT"] == "sim-field"
        if name.startswith("dark"):
            assert h["EXPTIME"] == 60.0
    assert all(a < b for a, b in itertools.pairwise(dates))

    assert {headers[f"flat-gpp-{i:03d}.fits"]["FILTER"] for i in range(1, 6)} == {"g''"}
    assert {headers[f"flat-rpp-{i:03d}.fits"]["FILTER"] for i in range(1, 6)} == {"r''"}
    assert {headers[f"twiflat-V-{i:03d}.fits"]["FILTER"] for i in range(1, 8)} == {"V"}
    twi_exptimes = [headers[f"twiflat-V-{i:03d}.fits"]["EXPTIME"] for i in range(1, 8)]
    assert len(set(twi_exptimes)) > 1


def test_flat_selection_by_imagetyp(night):
    """Selecting on IMAGETYP finds exactly the flats, never the bias, dark or light frames."""
    _, paths, _ = night
    selected = [
        p.name for p in paths if fits.getval(p, "IMAGETYP").lower() in {"flat", "flatfield"}
    ]
    assert len(selected) == 17
    assert all(n.startswith(("flat-", "twiflat-")) for n in selected)


def test_dome_levels_drift_a_few_percent(night):
    _, paths, _ = night
    bias = float(np.median(np.stack([fits.getdata(p) for p in paths[:3]])))
    for part in ("gpp", "rpp"):
        levels = np.array([_median(p) - bias for p in paths if f"flat-{part}-" in p.name])
        assert np.all((levels > 20000) & (levels < 32000))
        drift = (levels.max() - levels.min()) / levels.mean()
        assert 0.01 < drift < 0.08
        # A drift, not jitter: monotonic over the sequence.
        steps = np.diff(levels)
        assert np.all(steps > 0) or np.all(steps < 0)


def test_twilight_levels_fall_several_fold(night):
    _, paths, _ = night
    levels = np.array([_median(p) for p in paths if p.name.startswith("twiflat")])
    assert np.all(np.diff(levels) < 0)
    assert levels[0] / levels[-1] > 4
    assert 35000 < levels[0] < 46000
    assert 5000 < levels[-1] < 9000


def test_twilight_stars_differ_between_frames(night):
    """Bright outliers (stars, cosmic rays) sit at different pixels in different frames."""
    _, paths, _ = night
    twi = [p for p in paths if p.name.startswith("twiflat")]
    masks = []
    for p in twi[-2:]:
        data = fits.getdata(p)
        med = np.median(data)
        masks.append(data > med + 8 * np.sqrt(med / 1.5))
    assert masks[0].sum() > 10
    assert masks[1].sum() > 10
    overlap = (masks[0] & masks[1]).sum() / min(masks[0].sum(), masks[1].sum())
    assert overlap < 0.5


def test_reproducible_for_a_seed(tmp_path):
    a = simulate_night(tmp_path / "a", shape=(32, 48), n_dome=2, n_twilight=3, seed=7)
    b = simulate_night(tmp_path / "b", shape=(32, 48), n_dome=2, n_twilight=3, seed=7)
    c = simulate_night(tmp_path / "c", shape=(32, 48), n_dome=2, n_twilight=3, seed=8)
    assert [p.name for p in a] == [p.name for p in b] == [p.name for p in c]
    for pa, pb, pc in zip(a, b, c, strict=True):
        da, db, dc = fits.getdata(pa), fits.getdata(pb), fits.getdata(pc)
        np.testing.assert_array_equal(da, db)
        assert not np.array_equal(da, dc)
        assert fits.getheader(pa) == fits.getheader(pb)


def test_uint16(tmp_path):
    paths = simulate_night(tmp_path, shape=(32, 48), n_dome=2, n_twilight=3, dtype="uint16")
    for path in paths:
        with fits.open(path, do_not_scale_image_data=True) as hdul:
            assert hdul[0].header["BITPIX"] == 16
            assert hdul[0].header["BZERO"] == 32768
        with fits.open(path) as hdul:
            data = hdul[0].data
            assert data.dtype == np.uint16
            assert data.min() > 0
        ccd = CCDData.read(path)
        assert ccd.unit == u.adu


def test_uint16_matches_float32_rounded(tmp_path):
    kw = dict(shape=(32, 48), n_dome=1, n_twilight=2, seed=5)
    f32 = simulate_night(tmp_path / "f", **kw)
    u16 = simulate_night(tmp_path / "u", dtype="uint16", **kw)
    for pf, pu in zip(f32, u16, strict=True):
        expected = np.clip(np.rint(fits.getdata(pf)), 0, 65535)
        np.testing.assert_array_equal(fits.getdata(pu).astype(np.float32), expected)


def test_refuses_to_clobber(tmp_path):
    paths = simulate_night(tmp_path, shape=(32, 48), n_dome=1, n_twilight=1)
    before = {p: p.stat().st_mtime_ns for p in paths}
    victim = paths[3]
    others = [p for p in paths if p != victim]
    for p in others:
        p.unlink()
    with pytest.raises(FileExistsError, match=victim.name) as info:
        simulate_night(tmp_path, shape=(32, 48), n_dome=1, n_twilight=1)
    assert "\n" not in str(info.value) and "--overwrite" in str(info.value)
    # Nothing was written before the refusal.
    assert sorted(tmp_path.iterdir()) == [victim]
    assert victim.stat().st_mtime_ns == before[victim]
    again = simulate_night(tmp_path, shape=(32, 48), n_dome=1, n_twilight=1, overwrite=True)
    assert again == paths
    assert all(p.is_file() for p in again)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shape": (8, 8)},
        {"shape": (32,)},
        {"dtype": "int32"},
        {"seed": -1},
        {"n_dome": -1},
    ],
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        simulate_night(tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_flat_field_truth_properties():
    truth = flat_field_truth(SHAPE, "V", 3)
    assert truth.shape == SHAPE
    assert truth.dtype == np.float32
    assert np.median(truth) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(truth, flat_field_truth(SHAPE, "V", 3))
    # Vignetting: the corners are darker than the centre.
    ny, nx = SHAPE
    centre = np.median(truth[ny // 2 - 8 : ny // 2 + 8, nx // 2 - 8 : nx // 2 + 8])
    corner = np.median(truth[:8, :8])
    assert corner < centre - 0.03
    # Pixel-response non-uniformity of about 1 %.
    resid = truth[:, 1:] - truth[:, :-1]
    assert 0.008 < np.std(resid) / np.sqrt(2) < 0.02
    # Filters differ, mildly.
    other = flat_field_truth(SHAPE, "g''", 3)
    assert not np.array_equal(truth, other)
    assert np.max(np.abs(truth - other)) < 0.1


def test_detector_defects():
    defects = detector_defects(SHAPE, 3)
    assert 1 <= len(defects["hot_columns"]) <= 2
    assert defects["bias"].shape == SHAPE
    assert abs(float(np.median(defects["bias"])) - 1000.0) < 5


def test_combined_twilight_flat_recovers_truth(night):
    """Bias-subtracted, median-normalised, median-combined V flats match the truth."""
    _, paths, _ = night
    master_bias = np.median(np.stack([fits.getdata(p) for p in paths[:3]]), axis=0)
    frames = []
    for p in paths:
        if p.name.startswith("twiflat"):
            data = fits.getdata(p).astype(np.float64) - master_bias
            frames.append(data / np.median(data))
    combined = np.median(np.stack(frames), axis=0)
    combined /= np.median(combined)

    truth = flat_field_truth(SHAPE, "V", 3)
    ratio = combined / truth
    good = np.ones(SHAPE, bool)
    for col, _row, _rate in detector_defects(SHAPE, 3)["hot_columns"]:
        good[:, col] = False
    ratio = ratio[good]
    assert np.median(np.abs(ratio - 1)) < 0.006
    assert np.percentile(np.abs(ratio - 1), 99.5) < 0.03
    # The structure of the truth, not a flat field of ones, is what was recovered.
    assert np.std(truth[good]) > 3 * np.std(ratio)


def test_rdnoise_is_in_electrons_as_rdnoise_takes_it(tmp_path):
    """RDNOISE (e-) / GAIN (e-/ADU) is the scatter of the raw overscan, in ADU (a bias level
    per row: differences of neighbouring columns, which have twice its variance)."""
    paths = simulate_night(tmp_path, shape=(256, 128), n_dome=1, n_twilight=0, raw=True)
    with fits.open(paths[0]) as hdul:
        header, data = hdul[0].header, hdul[0].data.astype(np.float64)
    x0 = int(header["BIASSEC"].strip("[]").split(",")[0].split(":")[0]) - 1
    overscan = data[:, x0:]
    measured = np.std(np.diff(overscan, axis=1)) / np.sqrt(2)  # ADU
    assert abs(measured * header["GAIN"] / header["RDNOISE"] - 1) < 0.05
    assert "e-" in header.comments["RDNOISE"]
