"""Bad-pixel masks (issue 27): ``gpuflat.ccdmask`` and ``gpuflat mask`` against
``ccdproc.ccdmask`` itself (never against gpuflat's own numbers), pixel for pixel, on
generated ratios with bad columns, clusters, hot and dead pixels, defects at the edges,
NaNs and infinities; the same mask whatever the band height; the product read by
``CCDData.read`` and ``gpuflat run --mask``; refusals; IRAF's ccdmask where irafcl is.

ccdproc's ccdmask is slow (pure Python over SciPy's rank filters): the images are small."""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings

import ccdproc
import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData

import gpuflat
from gpuflat._badpix import MaskParams, band_bytes, compute_mask, plan_rows
from gpuflat.cli import main


def _ratio(rng, shape=(96, 80), dtype=np.float32, nans=False):
    """A flat-field ratio (1 +- 1%) with the defects ccdmask is for."""
    ny, nx = shape
    a = rng.normal(1.0, 0.01, shape)
    a *= 1 + 0.02 * np.sin(np.arange(nx) / 9.0)[None, :]  # large-scale structure
    a[:, 7] *= 0.85  # a bad column
    a[ny // 3 :, nx // 2] *= 1.06  # a partial warm column (column sums)
    a[:, nx - 1] *= 0.7  # a bad column at the edge
    a[ny // 8 : ny // 8 + 4, nx // 3 : nx // 3 + 3] = 0.4  # a cluster
    a[0, 0] = 3.0  # a hot pixel in a corner
    a[ny - 1, nx * 2 // 3] = 0.0  # a dead pixel on the last row
    hot = rng.random(shape) < 0.004
    a[hot] *= rng.uniform(1.05, 1.5, hot.sum())
    dead = rng.random(shape) < 0.004
    a[dead] *= rng.uniform(0.5, 0.95, dead.sum())
    col = a[:, nx * 3 // 4]  # a column with short gaps of good lines between bad ones
    col[ny // 5 : ny // 2 : 3] *= 0.9
    if nans:
        a[rng.random(shape) < 0.01] = np.nan
        a[5, 5:8] = np.nan
        a[ny // 2, nx // 2] = np.inf
        a[ny // 2 + 1, nx // 2 + 1] = -np.inf
    return a.astype(dtype)


def _ccdproc(data, **kw) -> np.ndarray:
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # NaNs in SciPy's filters
        return ccdproc.ccdmask(CCDData(data, unit=u.dimensionless_unscaled), **kw)


PARAMS = [
    {},
    {"findbadcolumns": True},
    {"findbadcolumns": True, "ngood": 2, "lsigma": 4, "hsigma": 3.5},
    {"ncmed": 3, "nlmed": 5, "ncsig": 11, "nlsig": 9, "lsigma": 3.7, "hsigma": 4.2},
    {"ncmed": 1, "nlmed": 9, "ncsig": 25, "nlsig": 10, "lsigma": 3, "hsigma": 3},  # IRAF-ish
    {"ncmed": 8, "nlmed": 2, "ncsig": 6, "nlsig": 20, "lsigma": 2.5, "hsigma": 5},  # even
    {"ncmed": 2, "nlmed": 1, "ncsig": 3, "nlsig": 1, "lsigma": 1, "hsigma": 1},  # min / max
    {"ncmed": 31, "nlmed": 41, "ncsig": 41, "nlsig": 33, "lsigma": 2, "hsigma": 2},  # wide
]


def _name(params):
    return ",".join(f"{k}={v}" for k, v in params.items()) or "defaults"


@pytest.mark.parametrize("params", PARAMS, ids=_name)
def test_same_as_ccdproc(params):
    """float32 with NaNs and infinities, and float64 (each compiled once: the wide windows'
    median, which takes the tracker, in float32 only)."""
    rng = np.random.default_rng(len(str(params)))
    kinds = [(np.float32, True)] + ([] if params.get("nlmed", 7) > 9 else [(np.float64, False)])
    for dtype, nans in kinds:
        data = _ratio(rng, dtype=dtype, nans=nans)
        want = _ccdproc(data, **params)
        got = gpuflat.ccdmask(data, **params)
        assert got.dtype == bool and got.shape == want.shape
        assert 0 < want.sum() < want.size  # the case masks something, not everything
        np.testing.assert_array_equal(got, want, err_msg=f"{dtype.__name__}, {params}")


def test_counts_in_int32_lanes(monkeypatch):
    """Windows of 2**15 values or more count in int32 lanes: the same mask."""
    from gpuflat.backends import _ccdmask

    monkeypatch.setattr(_ccdmask, "INT16_COUNTS", 0)
    data = _ratio(np.random.default_rng(8), nans=True)
    for params in PARAMS[:2]:
        np.testing.assert_array_equal(gpuflat.ccdmask(data, **params), _ccdproc(data, **params))


def test_nan_windows_float64_and_tiny_images():
    """NaN windows take SciPy's own selection (its answer depends on where NaNs sit);
    windows much larger than the image reflect many times."""
    rng = np.random.default_rng(7)
    data = _ratio(rng, shape=(40, 33), dtype=np.float64, nans=True)
    for kw in ({}, {"ncmed": 4, "nlmed": 3, "ncsig": 5, "nlsig": 4, "lsigma": 1, "hsigma": 1}):
        np.testing.assert_array_equal(gpuflat.ccdmask(data, **kw), _ccdproc(data, **kw))
    for shape in ((5, 9), (1, 12), (13, 1), (3, 3)):
        tiny = rng.normal(1, 0.01, shape)
        tiny.flat[0] = 2.0
        small = {"ncmed": 3, "nlmed": 3, "ncsig": 4, "nlsig": 2, "lsigma": 0.5, "hsigma": 0.5}
        for kw in ({"lsigma": 1, "hsigma": 1}, small):
            np.testing.assert_array_equal(gpuflat.ccdmask(tiny, **kw), _ccdproc(tiny, **kw))


def test_ccddata_big_endian_and_integer_input():
    rng = np.random.default_rng(3)
    data = _ratio(rng, shape=(48, 40))
    want = _ccdproc(data)
    np.testing.assert_array_equal(gpuflat.ccdmask(CCDData(data, unit="adu")), want)
    np.testing.assert_array_equal(gpuflat.ccdmask(data.astype(">f4")), want)
    ints = (data * 1000).astype(np.int32)
    np.testing.assert_array_equal(gpuflat.ccdmask(ints), _ccdproc(ints))


@pytest.mark.parametrize("findbadcolumns", [False, True])
def test_band_height_does_not_matter(tmp_path, findbadcolumns):
    rng = np.random.default_rng(11)
    data = _ratio(rng, shape=(70, 45), nans=True)
    params = MaskParams(findbadcolumns=findbadcolumns, nlsig=13, nlmed=5)
    want = _ccdproc(data, **params.as_dict())
    path = tmp_path / "ratio.fits"
    fits.writeto(path, data)
    for rows in (1, 2, 3, 6, 7, 16, 69, 70):
        np.testing.assert_array_equal(compute_mask(data, params, rows=rows).view(bool), want)
    for rows in (1, 5, 70):  # streamed from the file, band by band
        np.testing.assert_array_equal(compute_mask(path, params, rows=rows).view(bool), want)
    per_row, fixed = band_bytes(data.shape, data.dtype, params, inline=False)
    limit = fixed + 3 * per_row  # 3-row bands, from the file
    assert plan_rows(data.shape, data.dtype, params, limit, inline=False) == 3
    small = gpuflat.ccdmask(path, mem_limit=limit, **params.as_dict())
    np.testing.assert_array_equal(small, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_straight_line_median_is_scipys(dtype):
    """The 7 x 7 median of straight-line code, two windows at a time (``_median_net``),
    against SciPy's ``median_filter``: ties (values on a coarse grid), infinities, NaNs,
    widths odd and even down to one column, and bands of rows out of a larger image."""
    from scipy import ndimage

    from gpuflat.backends._numba_ccdmask import _medsub_pairs_rows

    rng = np.random.default_rng(5)
    for shape in ((40, 37), (23, 20), (9, 8), (7, 3), (12, 1), (1, 9), (2, 2)):
        data = np.round(rng.normal(0, 3, shape)).astype(dtype)  # many ties
        data[rng.random(shape) < 0.03] = np.inf
        data[rng.random(shape) < 0.03] = -np.inf
        for nans in (False, True):
            if nans:
                data[rng.random(shape) < 0.02] = np.nan
            with np.errstate(invalid="ignore"):
                want = data - ndimage.median_filter(data, size=(7, 7), mode="reflect")
            out = np.full(shape, 99, dtype)
            _medsub_pairs_rows(data, 0, shape[0], 0, shape[0], out, 0)
            np.testing.assert_array_equal(out, want, err_msg=f"{shape} nans={nans}")
            r_a, r_b = shape[0] // 3, shape[0] - shape[0] // 4
            d_r0 = max(0, r_a - 3)  # a band: the rows its windows read, output rows only
            band = np.full((r_b - r_a, shape[1]), 99, dtype)
            _medsub_pairs_rows(data[d_r0 : r_b + 3], d_r0, shape[0], r_a, r_b, band, r_a)
            np.testing.assert_array_equal(band, want[r_a:r_b], err_msg=f"{shape} band")


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
def test_lane_vectors_are_numpys(dtype):
    """The sigma mask's 32-lane vector operations against NumPy on the same arrays."""
    import numba

    from gpuflat.backends._numba_lanes import (
        LANES,
        add_below,
        add_row_difference,
        count_at_most,
    )

    @numba.njit
    def run(win, table, new, old, k, row, x, y, edges):
        add_row_difference(win, table, new, old)
        add_below(table, row, x, y, edges)
        return count_at_most(win, k)

    rng = np.random.default_rng(2)
    for _ in range(20):
        table = rng.integers(-50, 50, (6, LANES)).astype(dtype)
        win = rng.integers(-100, 100, LANES).astype(dtype)
        edges = rng.integers(0, 40, LANES).astype(dtype)
        new, old, row = rng.integers(0, 6, 3)
        x, y = rng.integers(0, 40, 2)
        k = int(rng.integers(-100, 100))
        want_win = win + table[new] - table[old]
        want_table = table.copy()
        want_table[row] += (x < edges).astype(dtype) - (y < edges)
        assert run(win, table, new, old, k, row, np.int32(x), np.int32(y), edges) == np.sum(
            want_win <= k
        )
        np.testing.assert_array_equal(win, want_win)
        np.testing.assert_array_equal(table, want_table)


def test_generated_median_is_current():
    """The straight-line median in the tree is what ``_median_net.render`` makes."""
    from gpuflat.backends import _median_net

    path = _median_net.__file__.replace("_median_net.py", "_numba_ccdmask_net.py")
    with open(path) as f:
        assert f.read() == _median_net.render(), "run: python -m gpuflat.backends._generate"


@pytest.mark.parametrize(
    ("kw", "error", "text"),
    [
        ({"ncmed": 0}, ValueError, "ncmed=0"),
        ({"nlsig": 2.5}, TypeError, "nlsig must be an integer"),
        ({"lsigma": -1}, ValueError, "lsigma=-1"),
        ({"hsigma": float("nan")}, ValueError, "hsigma=nan"),
        ({"ngood": -1}, ValueError, "ngood=-1"),
        ({"byblocks": True}, ValueError, "byblocks=True is not supported"),
        ({"mem_limit": 0}, ValueError, "mem_limit=0"),
        ({"mem_limit": 100}, ValueError, "too small"),
        ({"findbadcolumns": "yes"}, TypeError, "findbadcolumns"),
    ],
)
def test_library_refuses_bad_parameters(kw, error, text):
    with pytest.raises(error, match=text):
        gpuflat.ccdmask(np.ones((20, 20), np.float32), **kw)
    with pytest.raises(TypeError):
        gpuflat.ccdmask(np.ones((20, 20)), nsigma=3)  # a misspelled keyword
    with pytest.raises(ValueError, match="two-dimensional"):
        gpuflat.ccdmask(np.ones(20))


# ---- the command and the product ------------------------------------------------------------


def _write(path, data, **header):
    hdr = fits.Header()
    for k, v in header.items():
        hdr[k] = v
    fits.PrimaryHDU(data, hdr).writeto(path)
    return path


def _mask(capsys, *argv):
    code = main(["mask", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_command_ratio_product_reads_everywhere(tmp_path, capsys):
    """The product is ccdproc's mask as uint8, in the primary HDU with a header of inputs
    and parameters; CCDData.read takes it as it is, and gpuflat run --mask applies it."""
    rng = np.random.default_rng(5)
    data = _ratio(rng, shape=(48, 40))
    ratio = _write(tmp_path / "ratio.fits", data)
    out = tmp_path / "bpm.fits"
    code, stdout, _ = _mask(capsys, "--ratio", ratio, "-o", out, "--lsigma", "6", "--hsigma",
                            "6", "--findbadcolumns", "--plots")  # fmt: skip
    assert code == 0 and "bpm.fits" in stdout
    want = _ccdproc(CCDData.read(ratio, unit="adu").data, lsigma=6, hsigma=6,
                    findbadcolumns=True)  # fmt: skip
    ccd = CCDData.read(out)  # no unit given: BUNIT is '' (dimensionless)
    assert ccd.data.dtype == np.uint8 and ccd.unit == u.dimensionless_unscaled
    np.testing.assert_array_equal(ccd.data, want.astype(np.uint8))
    h = ccd.header
    assert h["RATIO"] == "ratio.fits" and h["LSIGMA"] == 6 and h["FINDBADC"] is True
    assert h["NCMED"] == 7 and h["NGOOD"] == 5 and h["NMASKED"] == want.sum()
    assert h["COMBINED"] is True and h["IMAGETYP"] == "flat mask"
    with fits.open(out, checksum=True) as hdul:
        assert hdul[0].header["DATASUM"]
    assert (tmp_path / "bpm_mask.png").stat().st_size > 0
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]

    # gpuflat run --mask: the masked pixels have no frame left (MASK = 1, NaN)
    night = tmp_path / "night"
    night.mkdir()
    for i in range(3):
        flat = (1000 * rng.normal(1, 0.01, data.shape)).astype(np.float32)
        _write(night / f"f{i}.fits", flat, IMAGETYP="FLAT", FILTER="R")
    shutil.copy(out, night / "bpm.fits")  # a product beside the flats is never a flat
    code = main(["run", str(night), "-o", str(tmp_path / "masters"), "--mask", str(out), "-q"])
    assert code == 0
    with fits.open(tmp_path / "masters" / "combined_flat_filter_R.fits") as hdul:
        assert hdul[0].header["NCOMBINE"] == 3
        np.testing.assert_array_equal(hdul["MASK"].data, want.astype(np.uint8))


def test_command_low_high_dark(tmp_path, capsys):
    """Masters or frames combined on the way; the ratio is low / high; a dark's hot pixels
    (dark x gain / exposure time above the threshold, e-/s) are ORed in."""
    rng = np.random.default_rng(9)
    shape = (40, 36)
    pattern = _ratio(rng, shape=shape).astype(np.float64)
    low = (5000 * pattern * rng.normal(1, 0.002, shape)).astype(np.float32)
    high = (40000 * rng.normal(1, 0.002, shape)).astype(np.float32)
    _write(tmp_path / "low.fits", low)
    _write(tmp_path / "high.fits", high)
    dark = rng.normal(20, 2, shape)
    dark[3, 4] = 900.0  # 900 * 2 / 300 = 6 e-/s
    dark[8, 9] = 500.0  # 3.3 e-/s
    _write(tmp_path / "dark.fits", dark, EXPTIME=300.0, GAIN=2.0)
    out = tmp_path / "bpm.fits"
    code, _, _ = _mask(capsys, "--low", tmp_path / "low.fits", "--high", tmp_path / "high.fits",
                       "-o", out, "--dark", tmp_path / "dark.fits")  # fmt: skip
    assert code == 0
    ratio = CCDData(low, unit="adu").divide(CCDData(high, unit="adu")).data
    want = _ccdproc(ratio) | (dark * 2.0 / 300.0 > 4)
    got = fits.getdata(out)
    np.testing.assert_array_equal(got, want.astype(np.uint8))
    assert got[3, 4] == 1 and fits.getheader(out)["NHOTPIX"] == 1

    # groups of frames: combined by gpuflat.combine, then the same recipe
    for name, level in (("lo", 5000), ("hi", 40000)):
        for i in range(3):
            frame = level * (pattern if name == "lo" else 1) * rng.normal(1, 0.002, shape)
            _write(tmp_path / f"{name}{i}.fits", frame.astype(np.float32), IMAGETYP="FLAT")
    out2 = tmp_path / "bpm2.fits"
    code, _, _ = _mask(capsys, "--low", tmp_path / "lo*.fits", "--high", tmp_path / "hi*.fits",
                       "-o", out2, "--dark", tmp_path / "dark.fits",
                       "--hot-threshold", "3")  # fmt: skip
    assert code == 0
    lo_result = gpuflat.combine(sorted(str(p) for p in tmp_path.glob("lo*.fits")))
    hi_result = gpuflat.combine(sorted(str(p) for p in tmp_path.glob("hi*.fits")))
    lo, hi = lo_result.image, hi_result.image
    with np.errstate(all="ignore"):
        ratio = (lo.astype(np.float32) / hi.astype(np.float32)).astype(np.float32)
    want = _ccdproc(ratio) | (dark * 2.0 / 300.0 > 3)
    np.testing.assert_array_equal(fits.getdata(out2), want.astype(np.uint8))
    assert fits.getheader(out2)["NHOTPIX"] == 2

    # gpuflat's own masters (with their MASK, UNCERT and NCOMBINE planes) are one image each
    lo_result.write(tmp_path / "master_lo.fits")
    hi_result.write(tmp_path / "master_hi.fits")
    out3 = tmp_path / "bpm3.fits"
    code, _, _ = _mask(capsys, "--low", tmp_path / "master_lo.fits", "--high",
                       tmp_path / "master_hi.fits", "-o", out3)  # fmt: skip
    assert code == 0
    np.testing.assert_array_equal(fits.getdata(out3), _ccdproc(ratio).astype(np.uint8))


def test_command_mosaic_by_extname(tmp_path, capsys):
    """Each extension masked on its own; the dark's extensions, in another order, are
    matched by EXTNAME."""
    rng = np.random.default_rng(13)
    exts = {"CCD1": _ratio(rng, shape=(32, 30)), "CCD2": _ratio(rng, shape=(32, 30))}
    hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(d, name=n) for n, d in exts.items()]
    fits.HDUList(hdus).writeto(tmp_path / "ratio.fits")
    darks = {n: rng.normal(1, 0.1, (32, 30)) for n in exts}
    darks["CCD2"][1, 2] = 100.0
    dh = [fits.PrimaryHDU(header=fits.Header([("EXPTIME", 10.0), ("GAIN", 1.0)]))]
    dh += [fits.ImageHDU(darks[n], name=n) for n in ("CCD2", "CCD1")]
    fits.HDUList(dh).writeto(tmp_path / "dark.fits")
    out = tmp_path / "bpm.fits"
    code, _, _ = _mask(capsys, "--ratio", tmp_path / "ratio.fits", "-o", out, "--dark",
                       tmp_path / "dark.fits")  # fmt: skip
    assert code == 0
    with fits.open(out) as hdul:
        assert [h.name for h in hdul[1:]] == ["CCD1", "CCD2"]
        for name, data in exts.items():
            want = _ccdproc(data) | (darks[name] / 10.0 > 4)
            np.testing.assert_array_equal(hdul[name].data, want.astype(np.uint8))
        assert hdul["CCD2"].data[1, 2] == 1
    ccd = CCDData.read(out, hdu="CCD2")
    assert ccd.data.dtype == np.uint8

    # gpuflat run --mask with the mosaic's mask: each extension gets its own, by EXTNAME
    night = tmp_path / "night"
    night.mkdir()
    for i in range(3):
        hdus = [fits.PrimaryHDU(header=fits.Header([("IMAGETYP", "FLAT"), ("FILTER", "R")]))]
        hdus += [fits.ImageHDU((1000 * rng.normal(1, 0.01, (32, 30))).astype(np.float32),
                               name=n) for n in ("CCD2", "CCD1")]  # fmt: skip
        fits.HDUList(hdus).writeto(night / f"f{i}.fits")
    assert main(["run", str(night), "-o", str(tmp_path / "m"), "--mask", str(out), "-q"]) == 0
    with fits.open(tmp_path / "m" / "combined_flat_filter_R.fits") as hdul, fits.open(out) as bpm:
        for name in ("CCD1", "CCD2"):
            np.testing.assert_array_equal(hdul[f"{name}_MASK"].data, bpm[name].data)


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--ratio", "missing.fits"], "missing.fits: no such file"),
        (["--low", "low.fits", "--high", "small.fits"], "must have one shape"),
        (["--ratio", "ratio.fits", "--dark", "small.fits"], "must have one shape"),
        (["--ratio", "ratio.fits", "--ncmed", "0"], "ncmed=0"),
        (["--ratio", "ratio.fits", "--lsigma", "-2"], "lsigma=-2"),
        (["--ratio", "ratio.fits", "--hsigma", "nan"], "hsigma=nan"),
        (["--ratio", "ratio.fits", "--ngood", "-1"], "ngood=-1"),
        (["--ratio", "ratio.fits", "--ngood", "2.5"], "expected an integer"),
        (["--ratio", "ratio.fits", "--lsigam", "3"], "did you mean --lsigma"),
        (["--ratio", "ratio.fits", "--low", "low.fits"], "not both"),
        (["--low", "low.fits"], "--high"),
        (["--ratio", "ratio.fits", "--hot-threshold", "3"], "needs --dark"),
        (["--ratio", "ratio.fits", "--dark", "nodark.fits"], "no positive exposure time"),
        (["--ratio", "ratio.fits", "--mem-limit", "100"], "too small"),
        (["--ratio", "ratio.fits", "--ext", "CCD9"], "no extension"),
        (["--ratio", "ratio.fits", "-o", "existing.fits"], "exists"),
    ],
)
def test_command_refusals(tmp_path, capsys, monkeypatch, args, text):
    """One line on stderr, exit code 2, nothing written, nothing clobbered."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    _write(tmp_path / "ratio.fits", rng.normal(1, 0.01, (20, 20)).astype(np.float32))
    _write(tmp_path / "low.fits", rng.normal(1, 0.01, (20, 20)).astype(np.float32))
    _write(tmp_path / "small.fits", rng.normal(1, 0.01, (20, 19)).astype(np.float32))
    _write(tmp_path / "nodark.fits", rng.normal(1, 0.01, (20, 20)))
    _write(tmp_path / "existing.fits", np.zeros((2, 2), np.uint8))
    mef = [fits.PrimaryHDU(), fits.ImageHDU(np.ones((4, 4)), name="CCD1"),
           fits.ImageHDU(np.ones((4, 4)), name="CCD2")]  # fmt: skip
    if "--ext" in args:
        os.remove("ratio.fits")
        fits.HDUList(mef).writeto("ratio.fits")
    before = {p: os.path.getmtime(p) for p in os.listdir(tmp_path)}
    if "-o" not in args:
        args = [*args, "-o", "out.fits"]
    try:
        code = main(["mask", *args])
    except SystemExit as exc:  # argparse's errors: its usage line, then one error line
        code = exc.code
    _, err = capsys.readouterr()
    assert code == 2
    assert text in err
    lines = [ln for ln in err.splitlines() if ln.startswith("gpuflat mask: error:")]
    assert len(lines) == 1
    assert {p: os.path.getmtime(p) for p in os.listdir(tmp_path)} == before


def test_overwrite_replaces(tmp_path, capsys):
    rng = np.random.default_rng(2)
    ratio = _write(tmp_path / "ratio.fits", _ratio(rng, shape=(24, 24)))
    out = _write(tmp_path / "bpm.fits", np.zeros((2, 2), np.uint8))
    code, stdout, _ = _mask(capsys, "--ratio", ratio, "-o", out, "--overwrite", "-q",
                            "--mem-limit", "1MB")  # fmt: skip
    assert code == 0 and stdout == ""
    assert fits.getdata(out).shape == (24, 24)


def _irafcl():
    return os.environ.get("GPUFLAT_BENCH_IRAFCL") or shutil.which("irafcl")


@pytest.mark.skipif(_irafcl() is None, reason="irafcl (IRAF) is not installed")
def test_same_as_iraf_on_clear_defects(tmp_path):
    """IRAF's own ccdmask (noao.imred.ccdred) agrees where the defects are clear. It
    estimates sigma per block and also sums columns, so near the threshold it may differ
    from ccdproc, which gpuflat follows (docs/masks.md)."""
    rng = np.random.default_rng(21)
    data = rng.normal(1, 0.01, (80, 70)).astype(np.float32)
    data[:, 12] *= 0.8
    data[30:34, 40:43] = 0.3
    data[60, 5] = 2.0
    fits.writeto(tmp_path / "ratio.fits", data)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "TERM": "dumb", "USER": os.environ.get("USER", "t")}
    subprocess.run([_irafcl()], input="logout\n", env=env, text=True, capture_output=True,
                   check=True, cwd=tmp_path, timeout=120)  # fmt: skip
    script = "\n".join([
        'set imtype = "fits"', "noao", "imred", "ccdred", "unlearn ccdmask",
        'ccdmask ("ratio.fits", "iraf", ncmed=7, nlmed=7, ncsig=15, nlsig=15, lsigma=9., '
        "hsigma=9., ngood=5, linterp=1, cinterp=1, eqinterp=1)",
        'imcopy ("iraf.pl", "iraf.fits")', "logout", "",
    ])  # fmt: skip
    subprocess.run([_irafcl()], input=script, env=env, text=True, capture_output=True,
                   check=True, cwd=tmp_path, timeout=120)  # fmt: skip
    iraf = fits.getdata(tmp_path / "iraf.fits") != 0
    ours = gpuflat.ccdmask(data)
    np.testing.assert_array_equal(ours, _ccdproc(data))
    np.testing.assert_array_equal(ours, iraf)
