"""Raw frames calibrated in the stream (gpuflat._calibrate) against ccdproc's
calibrate-then-combine: ``ccd_process`` on every frame, then the combination."""

from __future__ import annotations

import json
from contextlib import ExitStack

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.modeling import models
from astropy.nddata import CCDData
from astropy.stats import mad_std

import gpuflat
from gpuflat import Calibration, CalibrationError
from gpuflat._frames import open_frames
from gpuflat.cli import main

ccdproc = pytest.importorskip("ccdproc")

NY, NX, OS, PRE = 40, 56, 8, 3  # image rows and columns, overscan columns, prescan rows
BIASSEC = f"[{NX + 1}:{NX + OS},1:{PRE + NY}]"
TRIMSEC = f"[1:{NX},{PRE + 1}:{PRE + NY}]"
PRESCAN = f"[1:{NX + OS},1:{PRE}]"  # rows below the image, spanning every column
EXPTIMES = (5.0, 7.5, 10.0, 13.0, 20.0, 3.0, 8.0)
DARK_TIME = 30.0


def _night(tmp_path, rng, dtype="float32", n=7, mef=0):
    """A raw night: flats with an overscan strip and prescan rows, a bias level drifting by
    frame and row, dark current (and a hot column) growing with the exposure time, different
    exposure times; the master bias and dark, of the trimmed shape."""
    tmp_path.mkdir(exist_ok=True)
    yy, xx = np.mgrid[:NY, :NX]
    pattern = 3.0 * np.sin(xx / 5.0) + 0.05 * yy  # bias structure left after the overscan
    flat = 1 - 0.15 * (((yy - NY / 2) / NY) ** 2 + ((xx - NX / 2) / NX) ** 2)
    rate = np.full((NY, NX), 0.8)
    rate[:, 17] += 25.0  # a hot column
    bias = (pattern + rng.normal(0, 0.3, (NY, NX))).astype(np.float32)
    dark = (rate * DARK_TIME + rng.normal(0, 0.5, (NY, NX))).astype(np.float64)
    paths = []
    for i in range(n):
        t = EXPTIMES[i % len(EXPTIMES)]
        exts = []
        for _ in range(max(mef, 1)):
            raw = np.empty((PRE + NY, NX + OS))
            level = 1000.0 + rng.normal(0, 5)
            drift = level + 2.0 * np.sin(np.arange(PRE + NY) / 6.0 + rng.uniform(0, 6))
            raw[:] = drift[:, None] + rng.normal(0, 4.0, raw.shape)
            signal = rng.uniform(8000, 30000) * flat * rng.normal(1, 0.01, (NY, NX))
            raw[PRE:, :NX] += pattern + rate * t + signal
            hits = rng.random((NY, NX)) < 0.01
            raw[PRE:, :NX][hits] += 5000.0
            exts.append(np.rint(raw).astype(np.uint16) if dtype == "uint16" else raw.astype(dtype))
        header = fits.Header(
            [("IMAGETYP", "FLAT"), ("FILTER", "R"), ("EXPTIME", t), ("BUNIT", "adu"),
             ("GAIN", 1.7), ("BIASSEC", BIASSEC), ("TRIMSEC", TRIMSEC)]
        )  # fmt: skip
        path = tmp_path / f"raw-{i:02d}.fits"
        if mef:
            hdus = [fits.PrimaryHDU(header=header)]
            # EXPTIME in each extension too, for ccdproc (gpuflat inherits the primary's)
            hdus += [fits.ImageHDU(d, fits.Header([("EXPTIME", t)]), name=f"CCD{k + 1}")
                     for k, d in enumerate(exts)]  # fmt: skip
            fits.HDUList(hdus).writeto(path)
        else:
            fits.PrimaryHDU(exts[0], header).writeto(path)
        paths.append(str(path))
    masters = []
    for name, data, t in (("bias", bias, 0.0), ("dark", dark, DARK_TIME)):
        path = tmp_path / f"master-{name}.fits"
        header = fits.Header([("EXPTIME", t), ("BUNIT", "adu")])
        if mef:
            hdus = [fits.PrimaryHDU(header=header)]
            # each detector its own master (the same data shifted, so a mix-up shows)
            hdus += [fits.ImageHDU(data + 10 * k, header, name=f"CCD{k + 1}")
                     for k in range(mef)]  # fmt: skip
            fits.HDUList(hdus).writeto(path)
        else:
            fits.PrimaryHDU(data, header).writeto(path)
        masters.append(str(path))
    return paths, *masters


def _ccd_process(path, bias, dark, *, model="median", gain=None, hdu=0, axis=1):
    """What the guide's "Calibrating the flats" does to one frame, with ccdproc."""
    ccd = CCDData.read(path, hdu=hdu, unit="adu")
    master_bias = CCDData.read(bias, hdu=hdu, unit="adu")
    master_dark = CCDData.read(dark, hdu=hdu, unit="adu")
    if axis == 0:  # ccd_process always uses overscan_axis=1: its steps one by one
        ccd = ccdproc.subtract_overscan(ccd, fits_section=PRESCAN, overscan_axis=0, median=True)
        ccd = ccdproc.trim_image(ccd, fits_section=TRIMSEC)
        ccd = ccdproc.subtract_bias(ccd, master_bias)
        return ccdproc.subtract_dark(
            ccd, master_dark, exposure_time="EXPTIME", exposure_unit=u.s, scale=True
        ).data
    oscan_model = None if model in ("median", "mean") else models.Polynomial1D(int(model[5:]))
    return ccdproc.ccd_process(
        ccd, oscan=BIASSEC, trim=TRIMSEC, master_bias=master_bias, dark_frame=master_dark,
        exposure_key="EXPTIME", exposure_unit=u.s, dark_scale=True,
        oscan_median=model != "mean", oscan_model=oscan_model,
        gain=None if gain is None else gain * u.electron / u.adu, gain_corrected=False,
    ).data  # fmt: skip


def _calibrated(paths, calibration, hdu=None):
    with ExitStack() as stack:
        calibrator = calibration.calibrator()
        stack.callback(calibrator.close)
        out = []
        for frame in open_frames(paths, stack, hdu=hdu):
            frame = calibrator.wrap(frame)
            buf = np.empty(frame.shape, np.float32)
            frame.read_rows(0, frame.shape[0], buf)
            out.append(buf)
        return np.array(out)


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
@pytest.mark.parametrize(
    ("model", "gain", "axis"),
    [("median", None, 1), ("mean", None, 1), ("poly:2", None, 1), ("median", 1.7, 1),
     ("median", None, 0)],
)  # fmt: skip
def test_each_frame_is_ccd_process_to_float32_rounding(tmp_path, rng, dtype, model, gain, axis):
    paths, bias, dark = _night(tmp_path, rng, dtype, n=3)
    calibration = Calibration(
        overscan=PRESCAN if axis == 0 else "BIASSEC", overscan_axis=axis, overscan_model=model,
        trim="TRIMSEC", bias=bias, dark=dark, gain=None if gain is None else "GAIN",
    )  # fmt: skip
    ours = _calibrated(paths, calibration)
    for path, frame in zip(paths, ours, strict=True):
        ref = _ccd_process(path, bias, dark, model=model, gain=gain, axis=axis)
        assert frame.shape == ref.shape == (NY, NX)
        # float32 rounding of the result (ccdproc itself works in float32 on float32 files)
        np.testing.assert_allclose(frame, ref, rtol=4e-7, atol=0)


def test_combined_equals_calibrate_then_combine(tmp_path, rng):
    """The guide's way: ccd_process on every frame, then combine the calibrated frames."""
    paths, bias, dark = _night(tmp_path, rng, "uint16")
    fused = gpuflat.combine(paths, overscan=BIASSEC, trim=TRIMSEC, bias=bias, dark=dark)
    calibrated = np.array([_ccd_process(p, bias, dark) for p in paths])
    ref = gpuflat.combine(calibrated)
    assert fused.image.shape == (NY, NX)
    np.testing.assert_array_equal(fused.count, ref.count)
    np.testing.assert_allclose(fused.image, ref.image, rtol=1e-6)
    np.testing.assert_allclose(fused.uncertainty, ref.uncertainty, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fused.scales, ref.scales, rtol=1e-6)
    # and against ccdproc.combine itself (without clipping, where the two agree by design:
    # ccdproc clips the unscaled values)
    ccds = [CCDData(c, unit="adu") for c in calibrated]
    theirs = ccdproc.combine(ccds, method="average", scale=lambda a: 1 / np.ma.median(a))
    ours = gpuflat.combine(paths, overscan=BIASSEC, trim=TRIMSEC, bias=bias, dark=dark, clip="none")
    np.testing.assert_allclose(ours.image, theirs.data, rtol=1e-6)


def test_against_ccdproc_combine_with_the_guide_arguments(tmp_path, rng):
    """ccdproc.combine with the guide's arguments on ccd_process's frames: the fused run
    scales before clipping (the guide's intent), so compare where no clipping differs."""
    paths, bias, dark = _night(tmp_path, rng, "float32")
    calibrated = [CCDData(_ccd_process(p, bias, dark), unit="adu") for p in paths]
    theirs = ccdproc.combine(
        calibrated, method="average", scale=lambda a: 1 / np.ma.median(a), sigma_clip=True,
        sigma_clip_low_thresh=5, sigma_clip_high_thresh=5, sigma_clip_func=np.ma.median,
        sigma_clip_dev_func=mad_std,
    )  # fmt: skip
    ours = gpuflat.combine(paths, overscan=BIASSEC, trim=TRIMSEC, bias=bias, dark=dark)
    # most pixels agree to float32 rounding; ccdproc's unscaled clipping (levels 8000-30000)
    # keeps or drops other samples at the rest (measured: 13-15 % of the pixels, up to 10 %)
    diff = np.abs(ours.image / theirs.data - 1)
    assert np.median(diff) < 1e-6 and np.mean(diff < 1e-6) > 0.5


@pytest.mark.parametrize(
    "kw",
    [{}, {"overscan_model": "poly:3"}, {"overscan": PRESCAN, "overscan_axis": 0},
     {"gain": 1.7, "overscan_model": "mean"}],
)  # fmt: skip
def test_banded_equals_unbanded(tmp_path, rng, kw):
    paths, bias, dark = _night(tmp_path, rng, "uint16")
    options = {"overscan": BIASSEC, "trim": TRIMSEC, "bias": bias, "dark": dark, **kw}
    whole = gpuflat.combine(paths, **options)
    banded = gpuflat.combine(paths, mem_limit=60e3, **options)
    assert whole.plan.single and banded.plan.nbands > 3
    for name in ("image", "uncertainty", "count"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(banded, name))


def test_plan_counts_the_calibration_buffers(tmp_path, rng):
    paths, bias, dark = _night(tmp_path, rng, "uint16", n=3)
    plain = gpuflat.combine(_calibrated(paths, Calibration(trim=TRIMSEC)), mem_limit=60e3)
    fused = gpuflat.combine(paths, trim=TRIMSEC, bias=bias, dark=dark, mem_limit=60e3)
    assert fused.plan.bytes_per_row > plain.plan.bytes_per_row
    assert fused.plan.rows < plain.plan.rows
    assert fused.calibration == {"trim": TRIMSEC, "bias": "master-bias.fits",
                                 "dark": "master-dark.fits", "exposure_key": "EXPTIME"}  # fmt: skip
    assert plain.calibration is None


def test_mosaic_per_extension_masters_and_sections(tmp_path, rng):
    paths, bias, dark = _night(tmp_path, rng, "float32", n=4, mef=2)
    for path in paths:  # the sections in each extension's own header
        with fits.open(path, mode="update") as hdul:
            for h in hdul[1:]:
                h.header["BIASSEC"] = BIASSEC
            del hdul[0].header["BIASSEC"]
    options = {"overscan": "BIASSEC", "trim": "TRIMSEC", "bias": bias, "dark": dark}
    mosaic = gpuflat.combine_mosaic(paths, **options)
    for k, label in enumerate(("CCD1", "CCD2"), start=1):
        calibrated = np.array([_ccd_process(p, bias, dark, hdu=k) for p in paths])
        ref = gpuflat.combine(calibrated)
        np.testing.assert_allclose(mosaic[label].image, ref.image, rtol=1e-6)
        single = gpuflat.combine(paths, ext=label, **options)
        np.testing.assert_array_equal(mosaic[label].image, single.image)
    exposure = gpuflat.combine_mosaic(paths, scale_per="exposure", **options)
    union = [np.concatenate([_ccd_process(p, bias, dark, hdu=k).ravel() for k in (1, 2)])
             for p in paths]  # fmt: skip
    np.testing.assert_allclose(exposure.levels, [np.median(u) for u in union], rtol=1e-6)
    out = mosaic.write(tmp_path / "m.fits")
    assert fits.getheader(out, 0)["HIERARCH GPUFLAT BIAS"] == "master-bias.fits"


def test_a_mosaic_master_without_the_extension_names_both(tmp_path, rng):
    paths, bias, _ = _night(tmp_path, rng, "float32", n=3, mef=2)
    with fits.open(bias) as hdul:
        fits.HDUList([hdul[0], hdul[1], fits.ImageHDU(hdul[2].data, name="CCD9")]).writeto(
            tmp_path / "other-bias.fits"
        )
    with pytest.raises(
        CalibrationError, match=r"other-bias.fits: .*no extension CCD2 for .*raw-00"
    ):
        gpuflat.combine_mosaic(paths, trim=TRIMSEC, bias=tmp_path / "other-bias.fits")


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"overscan": "[1:10"}, r"^overscan '\[1:10': a section is \[X1:X2,Y1:Y2\]"),
     ({"trim": "[0:10,:]"}, r"^trim '\[0:10,:\]': 0:10 must go up from 1"),
     ({"trim": "[5:2,:]"}, r"^trim .*must go up from 1"),
     ({"trim": "TRIM SEC"}, r"^trim 'TRIM SEC': expected a section like"),
     ({"overscan_axis": 2}, r"^overscan_axis must be 0, 1 or None"),
     ({"overscan_model": "poly"}, r"^overscan_model must be 'median', 'mean' or 'poly:N'"),
     ({"gain": -1.0}, r"^gain must be a finite number > 0"),
     ({"gain": "1 e"}, r"^gain '1 e': expected a number")],
)  # fmt: skip
def test_bad_options_are_one_line_value_errors(kw, match):
    with pytest.raises(ValueError, match=match) as excinfo:
        gpuflat.combine(np.ones((3, 8, 8)), **kw)
    _one_line(excinfo)


def test_data_errors_name_the_files(tmp_path, rng):
    paths, bias, dark = _night(tmp_path, rng, "float32", n=3)
    with pytest.raises(CalibrationError) as excinfo:  # not trimmed: the masters do not fit
        gpuflat.combine(paths, overscan=BIASSEC, bias=bias)
    text = _one_line(excinfo)
    assert "raw-00.fits" in text and "master-bias.fits" in text and f"{NY}x{NX}" in text
    with pytest.raises(CalibrationError, match=r"lies outside the frame") as excinfo:
        gpuflat.combine(paths, trim=f"[1:{NX + OS + 1},:]")
    assert "raw-00.fits" in _one_line(excinfo)
    with pytest.raises(CalibrationError, match=r"does not span every row") as excinfo:
        gpuflat.combine(paths, overscan=f"[{NX + 1}:{NX + OS},2:10]")
    _one_line(excinfo)
    with fits.open(paths[1], mode="update") as hdul:
        del hdul[0].header["EXPTIME"]
        del hdul[0].header["TRIMSEC"]
    with pytest.raises(CalibrationError) as excinfo:
        gpuflat.combine(paths, trim=TRIMSEC, dark=dark)
    text = _one_line(excinfo)
    assert "raw-01.fits: no EXPTIME keyword" in text and "master-dark.fits" in text
    with pytest.raises(CalibrationError, match=r"raw-01.fits: no TRIMSEC keyword") as excinfo:
        gpuflat.combine(paths, trim="TRIMSEC")
    _one_line(excinfo)
    with pytest.raises(gpuflat.FrameReadError, match=r"nothing.fits: cannot open"):
        gpuflat.combine(paths, trim=TRIMSEC, bias=tmp_path / "nothing.fits")


def test_no_calibration_changes_nothing(tmp_path, rng):
    paths, _, _ = _night(tmp_path, rng, "float32", n=3)
    assert Calibration().calibrator() is None and Calibration().describe() == {}
    plain = gpuflat.combine(paths)
    assert plain.image.shape == (PRE + NY, NX + OS) and plain.calibration is None


def test_cli_run_calibrates_raw_frames(tmp_path, rng, capsys):
    paths, bias, dark = _night(tmp_path / "raw", rng, "uint16")
    out = tmp_path / "masters"
    argv = ["run", str(tmp_path / "raw"), "-o", str(out), "--bias", bias, "--dark", dark,
            "--overscan", BIASSEC, "--trim", TRIMSEC, "--report", str(out / "r.json"),
            "-q"]  # fmt: skip
    assert main(argv) == 0
    product = out / "combined_flat_filter_R.fits"
    data, header = fits.getdata(product, header=True)
    calibrated = np.array([_ccd_process(p, bias, dark) for p in paths])
    np.testing.assert_allclose(data, gpuflat.combine(calibrated).image, rtol=1e-6)
    assert data.shape == (NY, NX)
    assert header["HIERARCH GPUFLAT OVERSCAN"] == BIASSEC
    assert header["HIERARCH GPUFLAT TRIM"] == TRIMSEC
    assert header["HIERARCH GPUFLAT DARK"] == "master-dark.fits"
    assert "BIASSEC" not in header and "TRIMSEC" not in header
    report = json.loads((out / "r.json").read_text())
    assert report["parameters"]["bias"] == "master-bias.fits"
    # the same from a TOML file (a number for the gain, keywords for the sections)
    toml = tmp_path / "farm.toml"
    toml.write_text(
        'inputs = ["raw"]\noutdir = "m2"\nbias = "raw/master-bias.fits"\n'
        'dark = "raw/master-dark.fits"\noverscan = "BIASSEC"\ntrim = "TRIMSEC"\n'
        "overscan-axis = 1\ngain = 1.7\n"
    )
    assert main(["run", "--config", str(toml), "-q"]) == 0
    gained = fits.getdata(tmp_path / "m2" / "combined_flat_filter_R.fits", header=True)
    assert gained[1]["HIERARCH GPUFLAT GAIN"] == 1.7
    np.testing.assert_allclose(gained[0], data, rtol=1e-5)  # scaled by the median: no gain
    assert gained[1]["BUNIT"] == ""  # normalised: dimensionless; unscaled, in electrons:
    assert main(["run", "--config", str(toml), "-q", "-o", str(tmp_path / "m3"),
                 "--scale", "none"]) == 0  # fmt: skip
    unscaled = fits.getdata(tmp_path / "m3" / "combined_flat_filter_R.fits", header=True)
    assert unscaled[1]["BUNIT"] == "electron"
    capsys.readouterr()
    assert main(["run", str(tmp_path / "raw"), "--overscan", "[1:2", "-o", str(out)]) == 2
    assert "--overscan '[1:2': a section is" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "raw"), "--bias", "nope.fits", "-o", str(out)]) == 2
    assert "--bias nope.fits: no such file" in capsys.readouterr().err


def test_simulate_raw_and_run_recover_the_flat(tmp_path):
    from gpuflat._simulate import OVERSCAN_COLS, flat_field_truth, simulate_night

    night = tmp_path / "night"
    paths = simulate_night(night, shape=(48, 64), n_dome=5, n_twilight=0, raw=True)
    assert [p.name for p in paths[-2:]] == ["master-bias.fits", "master-dark.fits"]
    header = fits.getheader(night / "flat-gpp-001.fits")
    assert fits.getdata(night / "flat-gpp-001.fits").shape == (48, 64 + OVERSCAN_COLS)
    assert header["BIASSEC"] == f"[65:{64 + OVERSCAN_COLS},1:48]"
    assert header["TRIMSEC"] == header["DATASEC"] == "[1:64,1:48]"
    assert fits.getdata(night / "master-dark.fits").shape == (48, 64)
    out = tmp_path / "masters"
    argv = ["run", str(night), "-o", str(out), "--overscan", "BIASSEC", "--trim", "TRIMSEC",
            "--bias", str(paths[-2]), "--dark", str(paths[-1]), "--imagetyp", "flatfield",
            "-q"]  # fmt: skip
    assert main(argv) == 0
    flat = fits.getdata(out / "combined_flat_filter_gp.fits")
    truth = flat_field_truth((48, 64), "g''", 0)
    ratio = (flat / np.median(flat)) / truth
    assert np.std(ratio) < 0.01 and abs(np.median(ratio) - 1) < 1e-3


def _raw_frames(tmp_path, rng, n=3):
    """Raw frames (PRE + NY rows, NX + OS columns) whose overscan level drifts by row in the
    columns NX+1..NX+OS and by column in the rows 1..PRE."""
    paths = []
    for i in range(n):
        raw = rng.normal(20000.0, 300.0, (PRE + NY, NX + OS))
        raw[:, NX:] = 1000.0 + 30.0 * np.sin(np.arange(PRE + NY) / 4.0 + i)[:, None]
        raw[:PRE] = 900.0 + 20.0 * np.cos(np.arange(NX + OS) / 3.0 + i)[None, :]
        raw += rng.normal(0.0, 2.0, raw.shape)
        path = tmp_path / f"oscan-{i}.fits"
        fits.PrimaryHDU(raw.astype(np.float32)).writeto(path)
        paths.append(str(path))
    return paths


def test_overscan_axis_auto_follows_the_strips_shape(tmp_path, rng):
    """overscan_axis=None (``--overscan-axis auto``): a strip of columns (taller than wide)
    gives one value per row, a strip of rows (wider than tall) one value per column, as
    NumPy's median of the strip along its short side says."""
    from gpuflat.farm.options import overscan_axis

    assert overscan_axis("auto") is None
    paths = _raw_frames(tmp_path, rng)
    raws = [fits.getdata(p).astype(np.float64) for p in paths]
    columns = f"[{NX + 1}:{NX + OS},:]"  # OS columns, every row: one value per row
    ours = _calibrated(paths, Calibration(overscan=columns, overscan_axis=None))
    for raw, frame in zip(raws, ours, strict=True):
        want = raw - np.median(raw[:, NX:], axis=1)[:, None]
        np.testing.assert_allclose(frame, want.astype(np.float32), rtol=1e-6, atol=1e-3)
    rows = f"[:,1:{PRE}]"  # PRE rows, every column: one value per column
    ours = _calibrated(paths, Calibration(overscan=rows, overscan_axis=None))
    for raw, frame in zip(raws, ours, strict=True):
        want = raw - np.median(raw[:PRE], axis=0)[None, :]
        np.testing.assert_allclose(frame, want.astype(np.float32), rtol=1e-6, atol=1e-3)


def test_a_gain_of_zero_in_a_header_is_refused_naming_the_file(tmp_path, rng):
    """GAIN = 0 (an all-zero flat) and GAIN < 0 in one frame's header: a CalibrationError
    naming that frame; the option gain=0 is refused too."""
    paths, _, _ = _night(tmp_path, rng, "float32", n=3)
    for bad in (0, 0.0, -1.5):
        with fits.open(paths[1], mode="update") as hdul:
            hdul[0].header["GAIN"] = bad
        with pytest.raises(CalibrationError, match=r"raw-01\.fits: gain GAIN") as excinfo:
            gpuflat.combine(paths, gain="GAIN", scale="none")
        _one_line(excinfo)
    with pytest.raises(ValueError, match=r"^gain must be a finite number > 0"):
        gpuflat.combine(paths, gain=0)


def test_a_one_column_or_one_row_section_is_taken(tmp_path, rng):
    """``[5:5,:]`` (one column; ``[5,:]`` the same), ``[:,2:2]`` (one row): accepted, and
    the strip's one value per row (per column) is subtracted."""
    from gpuflat._sections import Section, parse_section

    assert parse_section("[5:5,:]", "overscan") == Section("[5:5,:]", (4, 5), None)
    assert parse_section("[5,:]", "overscan") == Section("[5,:]", (4, 5), None)
    assert parse_section("[:,2:2]", "overscan") == Section("[:,2:2]", None, (1, 2))
    assert parse_section("[3:3,7:7]", "trim") == Section("[3:3,7:7]", (2, 3), (6, 7))
    paths = _raw_frames(tmp_path, rng)
    raws = [fits.getdata(p).astype(np.float64) for p in paths]
    col = NX + 2
    ours = _calibrated(paths, Calibration(overscan=f"[{col}:{col},:]"))
    for raw, frame in zip(raws, ours, strict=True):
        np.testing.assert_allclose(frame, (raw - raw[:, col - 1 : col]).astype(np.float32),
                                   rtol=1e-6, atol=1e-3)  # fmt: skip
    ours = _calibrated(paths, Calibration(overscan="[:,2:2]", overscan_axis=0))
    for raw, frame in zip(raws, ours, strict=True):
        np.testing.assert_allclose(frame, (raw - raw[1:2, :]).astype(np.float32),
                                   rtol=1e-6, atol=1e-3)  # fmt: skip
