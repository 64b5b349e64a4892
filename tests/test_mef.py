"""Multi-extension (mosaic) flats, tile-compressed inputs and --compress products.

Expected values come from independent computations: the extensions' frames combined on
their own as in-memory arrays, plain NumPy medians, and tests/reference.py.
"""

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData
from conftest import flat_stack
from reference import reference_combine

import gpuflat
from gpuflat._simulate import simulate_night
from gpuflat.cli import main

SHAPE = (40, 30)
GAINS = {"CCD1": 1.0, "CCD2": 0.8, "CCD3": 1.25}  # relative detector levels
N = 4


def write_mef(path, exts, *, order=None, compress=None, **primary):
    """``exts``: {EXTNAME: 2-D array} (or {(EXTNAME, EXTVER): array}); written in ``order``."""
    hdr = fits.Header()
    for k, v in primary.items():
        hdr[k] = v
    hdus = [fits.PrimaryHDU(header=hdr)]
    for key in order or list(exts):
        name, ver = key if isinstance(key, tuple) else (key, None)
        if compress:
            h = fits.CompImageHDU(exts[key], name=name, compression_type=compress)
        else:
            h = fits.ImageHDU(exts[key], name=name)
        if ver is not None:
            h.header["EXTVER"] = ver
        hdus.append(h)
    fits.HDUList(hdus).writeto(path)
    return str(path)


def mosaic_data(rng, n=N, nan=False):
    """{EXTNAME: stack[n, rows, cols]} with per-detector gains and the same exposure levels."""
    levels = rng.uniform(0.6, 1.6, n)
    out = {}
    for name, gain in GAINS.items():
        stack = flat_stack(rng, n=n, shape=SHAPE, level=1.0)
        stack /= np.median(stack, axis=(1, 2), keepdims=True)
        stack *= (1000.0 * gain * levels)[:, None, None]
        if nan:
            stack[rng.random(stack.shape) < 0.02] = np.nan
        out[name] = stack.astype(np.float32)
    return out


@pytest.fixture
def mosaic(tmp_path, rng):
    d = tmp_path / "mosaic"
    d.mkdir()
    data = mosaic_data(rng)
    paths = [
        write_mef(
            d / f"flat-{i}.fits",
            {name: s[i] for name, s in data.items()},
            IMAGETYP="FLAT",
            FILTER="r",
            EXPTIME=1.0 + i,
        )
        for i in range(N)
    ]
    return d, paths, data


def numpy_median(values):
    """The exact median of the finite values, the two middle ones averaged in float64."""
    v = np.sort(values[np.isfinite(values)].astype(np.float64))
    k = v.size
    return (v[(k - 1) // 2] + v[k // 2]) / 2


def native(a):
    return a.astype(a.dtype.newbyteorder("="))


def assert_same(result, expected):
    np.testing.assert_array_equal(result.image, expected.image)
    np.testing.assert_array_equal(result.uncertainty, expected.uncertainty)
    np.testing.assert_array_equal(result.count, expected.count)


# --- the library -----------------------------------------------------------------------


def test_each_extension_equals_its_frames_combined_alone(mosaic):
    _, paths, data = mosaic
    result = gpuflat.combine_mosaic(paths, backend="cpu")
    assert list(result.extensions) == ["CCD1", "CCD2", "CCD3"]
    for name, stack in data.items():
        alone = gpuflat.combine(list(stack), backend="cpu")  # arrays, no FITS involved
        assert_same(result[name], alone)
        assert_same(gpuflat.combine(paths, ext=name.lower(), backend="cpu"), alone)
    # and against the independent NumPy reference
    stack = data["CCD2"]
    scales = [1 / numpy_median(f) for f in stack]
    np.testing.assert_array_equal(result["CCD2"].scales, scales)
    image, _, count = reference_combine(stack.reshape(N, -1), scale=scales)
    np.testing.assert_allclose(result["CCD2"].image.ravel(), image, rtol=1e-6)
    np.testing.assert_array_equal(result["CCD2"].count.ravel(), count)


def test_scale_per_exposure_is_the_median_of_the_union(tmp_path, rng):
    data = mosaic_data(rng, nan=True)
    paths = [
        write_mef(tmp_path / f"f{i}.fits", {k: s[i] for k, s in data.items()}, IMAGETYP="FLAT")
        for i in range(N)
    ]
    result = gpuflat.combine_mosaic(
        paths, scale_per="exposure", ext="CCD1,CCD3", backend="cpu", mem_limit=1e6
    )
    assert list(result.extensions) == ["CCD1", "CCD3"]
    union = [np.concatenate([data["CCD1"][i].ravel(), data["CCD3"][i].ravel()]) for i in range(N)]
    levels = [numpy_median(u) for u in union]
    np.testing.assert_array_equal(result.levels, levels)
    np.testing.assert_array_equal(result.scales, 1 / np.array(levels))
    for name in ("CCD1", "CCD3"):
        np.testing.assert_array_equal(result[name].scales, result.scales)
        expected = gpuflat.combine(list(data[name]), scale=1 / np.array(levels), backend="cpu")
        assert_same(result[name], expected)
    # the detectors keep their relative gains (per extension, each would be ~1)
    ratio = np.nanmedian(result["CCD3"].image) / np.nanmedian(result["CCD1"].image)
    assert ratio == pytest.approx(GAINS["CCD3"] / GAINS["CCD1"], rel=0.02)
    per_ext = gpuflat.combine_mosaic(paths, ext=["CCD1", "CCD3"], backend="cpu")
    assert np.nanmedian(per_ext["CCD3"].image) == pytest.approx(1.0, rel=0.02)


def test_scale_per_exposure_must_fit_mem_limit(mosaic):
    _, paths, _ = mosaic
    with pytest.raises(ValueError, match="mem_limit"):
        gpuflat.combine_mosaic(paths, scale_per="exposure", mem_limit=10_000, backend="cpu")


def test_matched_by_extname_not_position(tmp_path, rng):
    data = mosaic_data(rng)
    orders = [["CCD2", "CCD3", "CCD1"], ["CCD3", "CCD1", "CCD2"], ["CCD1", "CCD2", "CCD3"]]
    paths = [
        write_mef(
            tmp_path / f"f{i}.fits",
            {k: s[i] for k, s in data.items()},
            order=orders[i % 3],
            IMAGETYP="FLAT",
        )
        for i in range(N)
    ]
    result = gpuflat.combine_mosaic(paths, backend="cpu")
    assert list(result.extensions) == orders[0]  # the first file's order
    for name, stack in data.items():
        assert_same(result[name], gpuflat.combine(list(stack), backend="cpu"))
    out = tmp_path / "out.fits"
    result.write(out)
    with fits.open(out) as hdul:
        names = [h.name for h in hdul]
    assert names == ["PRIMARY"] + [
        f"{e}{s}" for e in orders[0] for s in ("", "_UNCERT", "_MASK", "_NCOMBINE")
    ]


def test_extver_and_ext_errors(tmp_path, rng):
    data = mosaic_data(rng, n=3)
    paths = [
        write_mef(
            tmp_path / f"f{i}.fits",
            {("SCI", 1): data["CCD1"][i], ("SCI", 2): data["CCD2"][i]},
            IMAGETYP="FLAT",
        )
        for i in range(3)
    ]
    result = gpuflat.combine_mosaic(paths, ext="SCI,2", backend="cpu")
    assert list(result.extensions) == ["SCI,2"]
    assert_same(result["SCI,2"], gpuflat.combine(list(data["CCD2"]), backend="cpu"))
    assert_same(
        gpuflat.combine(paths, ext=("sci", 2), backend="cpu"), result["SCI,2"]
    )  # fmt: skip
    out = tmp_path / "out.fits"
    gpuflat.combine_mosaic(paths, backend="cpu").write(out)
    ccd = CCDData.read(out, hdu=("SCI", 2), hdu_uncertainty="SCI_UNCERT", hdu_mask="SCI_MASK")
    np.testing.assert_array_equal(ccd.data, result["SCI,2"].image)
    with pytest.raises(gpuflat.FrameReadError, match=r"f0\.fits: 2 extensions named SCI"):
        gpuflat.combine(paths, ext="SCI")
    with pytest.raises(gpuflat.FrameReadError, match=r"f0\.fits: no extension NOPE"):
        gpuflat.combine(paths, ext="nope")
    with pytest.raises(TypeError, match="ext"):
        gpuflat.combine_mosaic(paths, ext=3.5)
    with pytest.raises(ValueError, match="scale_per"):
        gpuflat.combine_mosaic(paths, scale_per="detector")
    with pytest.raises(ValueError, match="ext"):
        gpuflat.combine([data["CCD1"][0]], ext="SCI")


def test_missing_extension_names_the_file(mosaic, tmp_path, capsys):
    d, paths, data = mosaic
    write_mef(
        d / "flat-9.fits",
        {"CCD1": data["CCD1"][0], "CCD3": data["CCD3"][0]},
        IMAGETYP="FLAT",
        FILTER="r",
    )
    with pytest.raises(gpuflat.FrameReadError, match=r"flat-9\.fits: no extension CCD2"):
        gpuflat.combine_mosaic([*paths, str(d / "flat-9.fits")])
    out = tmp_path / "out"
    assert main(["run", str(d), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "flat-9.fits: no extension CCD2" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() or not list(out.iterdir())
    # --ext without CCD2 makes the file usable; --skip-bad leaves it out
    assert main(["run", str(d), "-o", str(out), "-q", "--ext", "CCD1,CCD3"]) == 0
    with fits.open(out / "combined_flat_filter_r.fits") as hdul:
        assert hdul[0].header["NCOMBINE"] == N + 1
        assert "CCD2" not in hdul
    assert main(["run", str(d), "-o", str(out), "-q", "--skip-bad", "--overwrite"]) == 0
    with fits.open(out / "combined_flat_filter_r.fits") as hdul:
        assert hdul[0].header["NCOMBINE"] == N and "CCD2" in hdul


# --- the command line --------------------------------------------------------------------


def test_cli_mosaic_product(mosaic, tmp_path):
    d, _, data = mosaic
    out = tmp_path / "out"
    assert main(["run", str(d), "-o", str(out), "-q"]) == 0
    target = out / "combined_flat_filter_r.fits"
    with fits.open(target) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY"] + [
            f"{e}{s}" for e in GAINS for s in ("", "_UNCERT", "_MASK", "_NCOMBINE")
        ]
        assert hdul[0].data is None
        primary = hdul[0].header
        assert primary["NCOMBINE"] == N and primary["FILTER"] == "r"
        assert primary["IMCMB001"] == "flat-0.fits" and "SCALE001" not in primary
        assert primary["HIERARCH GPUFLAT SCALE_PER"] == "extension"
        for name, stack in data.items():
            expected = gpuflat.combine(list(stack), backend="cpu")
            np.testing.assert_array_equal(hdul[name].data, expected.image)
            np.testing.assert_array_equal(hdul[f"{name}_UNCERT"].data, expected.uncertainty)
            np.testing.assert_array_equal(hdul[f"{name}_NCOMBINE"].data, expected.count)
            np.testing.assert_array_equal(hdul[f"{name}_MASK"].data, expected.mask)
            # (a FITS header holds 16 significant digits)
            assert hdul[name].header["SCALE002"] == pytest.approx(expected.scales[1], rel=1e-14)
            assert hdul[name].header["IMAGETYP"] == "FLAT"
    ccd = CCDData.read(target, hdu="CCD2", hdu_uncertainty="CCD2_UNCERT", hdu_mask="CCD2_MASK")
    assert ccd.unit == "" and ccd.shape == SHAPE  # normalised: dimensionless
    # never clobbered without --overwrite
    before = target.read_bytes()
    assert main(["run", str(d), "-o", str(out), "-q", "--scale-per", "exposure"]) == 0
    assert target.read_bytes() == before
    again = ["run", str(d), "-o", str(out), "-q", "--scale-per", "exposure", "--overwrite"]
    assert main(again) == 0
    levels = [numpy_median(np.concatenate([s[i].ravel() for s in data.values()])) for i in range(N)]
    with fits.open(target) as hdul:
        scales = [hdul[0].header[f"SCALE{i + 1:03d}"] for i in range(N)]
    assert scales == pytest.approx([1 / v for v in levels], rel=1e-14)
    assert not list(out.glob(".*tmp*"))


def test_cli_ext_usage_errors(mosaic, tmp_path, capsys):
    d, _, _ = mosaic
    out = tmp_path / "out"
    assert main(["run", str(d), "-o", str(out), "--ext", "CCD9"]) == 2
    err = capsys.readouterr().err
    assert "CCD9" in err and "flat-0.fits" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["run", str(d), "-o", str(out), "--ext", "2,CCD1"]) == 2
    assert "--ext" in capsys.readouterr().err
    assert main(["inspect", str(d), "--ext", "ccd3,CCD1"]) == 0
    text = capsys.readouterr().out
    assert "extensions: CCD1 40x30, CCD3 40x30" in text and "x3 ext" in text


def test_cli_simulate_mef(tmp_path, capsys):
    night = tmp_path / "night"
    args = ["simulate", str(night), "--size", "24x20", "--n-dome", "3", "--n-twilight", "3"]
    assert main([*args, "--mef", "3", "-q"]) == 0
    with fits.open(night / "flat-gpp-001.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "CCD1", "CCD2", "CCD3"]
        assert hdul[0].data is None and hdul[0].header["IMAGETYP"] == "flatfield"
        medians = [np.median(h.data) for h in hdul[1:]]
        gains = [h.header["GAIN"] for h in hdul[1:]]
    assert len(set(gains)) == 3
    # the same light in ADU: inversely proportional to the gain (bias ~1000 ADU on top)
    np.testing.assert_allclose((np.array(medians) - 1000) * gains, 24000 * 1.5, rtol=0.05)
    out = tmp_path / "out"
    assert main(["run", str(night), "-o", str(out), "-q", "--scale-per", "exposure"]) == 0
    with fits.open(out / "combined_flat_filter_gp.fits") as hdul:
        assert [h.name for h in hdul][1::4] == ["CCD1", "CCD2", "CCD3"]


# --- tile-compressed inputs and products -------------------------------------------------


def compress_copy(src, dst, compression_type="RICE_1"):
    """``dst``: ``src`` with every image HDU tile-compressed (lossless for integer data)."""
    with fits.open(src) as hdul:
        hdus = [fits.PrimaryHDU(header=hdul[0].header if hdul[0].data is None else None)]
        for h in hdul:
            if h.data is not None:
                hdr = h.header.copy()
                for k in ("SIMPLE", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT"):
                    hdr.remove(k, ignore_missing=True)
                name = h.name if h.name != "PRIMARY" else None
                hdus.append(
                    fits.CompImageHDU(
                        h.data,
                        hdr,
                        name=name,
                        compression_type=compression_type,
                        tile_shape=(7, h.data.shape[1]),
                    )
                )
        fits.HDUList(hdus).writeto(dst)


@pytest.mark.parametrize("mef", [0, 2])
def test_fz_inputs_give_identical_products(tmp_path, mef):
    raw = tmp_path / "raw"
    simulate_night(raw, shape=(40, 30), n_dome=3, n_twilight=0, dtype="uint16", mef=mef)
    fz = tmp_path / "fz"
    fz.mkdir()
    for p in raw.glob("*.fits"):
        compress_copy(p, fz / (p.name + ".fz"))
    with fits.open(fz / "flat-gpp-001.fits.fz") as hdul:
        assert isinstance(hdul[1], fits.CompImageHDU)
    outs = []
    for name, src in (("plain", raw), ("fz", fz)):
        out = tmp_path / f"out-{name}"
        # a small memory limit: several bands, each read through CompImageHDU.section
        assert main(["run", str(src), "-o", str(out), "-q", "--mem-limit", "60000"]) == 0
        outs.append(out)
    for product in ("combined_flat_filter_gp.fits", "combined_flat_filter_rp.fits"):
        with fits.open(outs[0] / product) as a, fits.open(outs[1] / product) as b:
            assert [h.name for h in a] == [h.name for h in b]
            for ha, hb in zip(a, b, strict=True):
                if ha.data is not None:
                    assert native(ha.data).tobytes() == native(hb.data).tobytes()
            if mef:
                assert a[1].header["IMAGETYP"] == b[1].header["IMAGETYP"] == "flatfield"
    # rows read band by band from a compressed file equal the uncompressed rows
    from gpuflat._frames import FitsFrame

    frame = FitsFrame(fz / "flat-gpp-002.fits.fz", hdu=("CCD2", None) if mef else None)
    band = np.empty((9, 30), np.float32)
    frame.read_rows(10, 19, band)
    frame.close()
    with fits.open(raw / "flat-gpp-002.fits") as hdul:
        np.testing.assert_array_equal(band, hdul["CCD2" if mef else 0].data[10:19])


@pytest.mark.parametrize("mef", [0, 2])
def test_compress_products_read_back_losslessly(tmp_path, mef, rng):
    night = tmp_path / "night"
    simulate_night(night, shape=(40, 30), n_dome=3, n_twilight=0, mef=mef)
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    assert main(["run", str(night), "-o", str(plain), "-q", "--nlow", "2"]) == 0
    assert main(["run", str(night), "-o", str(packed), "-q", "--nlow", "2", "--compress"]) == 0
    product = "combined_flat_filter_rp.fits"
    with fits.open(plain / product) as a, fits.open(packed / product) as b:
        image_a = [h for h in a if h.data is not None]
        image_b = [h for h in b if h.data is not None]
        assert len(image_a) == len(image_b) == 4 * max(mef, 1)
        for ha, hb in zip(image_a, image_b, strict=True):
            if not mef and hb is b[0]:  # a single image's flat stays the plain primary HDU
                assert not isinstance(hb, fits.CompImageHDU)
                skip = ("CHECKSUM", "GPF_DATE")  # the times of writing
                assert [c for c in ha.header.items() if c[0] not in skip] == [
                    c for c in hb.header.items() if c[0] not in skip
                ]
            else:
                assert isinstance(hb, fits.CompImageHDU)
                assert hb.compression_type == "GZIP_2" and "ZQUANTIZ" not in hb._bintable.header
            a_data, b_data = native(ha.data), native(hb.data)
            assert a_data.dtype == b_data.dtype
            assert a_data.tobytes() == b_data.tobytes()  # bit for bit, NaN payloads too
    if not mef:
        # astropy's reader reads the primary HDU, as the guide calls it: no hdu=
        ccd = CCDData.read(packed / product)
        expected = CCDData.read(plain / product)
        np.testing.assert_array_equal(ccd.data, expected.data)
        np.testing.assert_array_equal(ccd.uncertainty.array, expected.uncertainty.array)
        np.testing.assert_array_equal(ccd.mask, expected.mask)
        assert ccd.header["NCOMBINE"] == 3 and ccd.header["FILTER"] == "r''"


def test_mosaic_bad_pixel_mask_per_extension(tmp_path, rng):
    data = {k: v for k, v in mosaic_data(rng, n=3).items() if k != "CCD3"}
    paths = [
        write_mef(tmp_path / f"f{i}.fits", {k: s[i] for k, s in data.items()}, IMAGETYP="FLAT")
        for i in range(3)
    ]
    masks = {k: (rng.random(SHAPE) < 0.3).astype(np.uint8) for k in data}
    mask_file = write_mef(tmp_path / "bpm.fits", masks, order=["CCD2", "CCD1"])
    result = gpuflat.combine_mosaic(paths, mask=mask_file, scale_per="exposure", backend="cpu")
    levels = [
        numpy_median(np.concatenate([data[k][i][masks[k] == 0] for k in data])) for i in range(3)
    ]
    np.testing.assert_array_equal(result.scales, 1 / np.array(levels))
    for k, stack in data.items():
        expected = gpuflat.combine(list(stack), mask=masks[k], scale=1 / np.array(levels))
        assert_same(result[k], expected)
    # a mask file without one of the extensions is an error naming it
    write_mef(tmp_path / "bpm1.fits", {"CCD1": masks["CCD1"], "CCD9": masks["CCD2"]})
    with pytest.raises(gpuflat.FrameReadError, match=r"bpm1\.fits: .*no extension CCD2"):
        gpuflat.combine_mosaic(paths, mask=str(tmp_path / "bpm1.fits"))


def test_skip_bad_leaves_out_a_truncated_mosaic(tmp_path, capsys):
    from gpuflat._simulate import simulate_night

    night = tmp_path / "night"
    simulate_night(night, shape=(24, 20), n_dome=0, n_twilight=4, mef=2, seed=3)
    files = sorted(night.glob("twiflat*.fits"))
    raw = files[2].read_bytes()
    files[2].write_bytes(raw[: len(raw) - 3000])  # the last detector cut short
    assert main(["run", str(night), "-o", str(tmp_path / "a"), "-q"]) == 1
    assert f"{files[2].name}" in capsys.readouterr().err
    assert main(["run", str(night), "-o", str(tmp_path / "b"), "--skip-bad"]) == 0
    out = capsys.readouterr()
    assert f"{files[2].name}: truncated" in out.err and "(3 of 4 frames, group V)" in out.out
    with fits.open(tmp_path / "b" / "combined_flat_filter_V.fits") as hdul:
        assert hdul[0].header["NCOMBINE"] == 3


def test_skip_bad_leaves_out_a_mosaic_cut_after_selection(tmp_path, capsys, monkeypatch):
    """A file that reads whole at selection but not when combined (changed meanwhile)."""
    import gpuflat.farm as farm

    night = tmp_path / "night"
    simulate_night(night, shape=(24, 20), n_dome=0, n_twilight=4, mef=2, seed=3)
    files = sorted(night.glob("twiflat*.fits"))
    select = farm.select

    def select_then_cut(options):
        found = select(options)
        raw = files[1].read_bytes()
        files[1].write_bytes(raw[: len(raw) - 3000])
        return found

    monkeypatch.setattr(farm, "select", select_then_cut)
    assert main(["run", str(night), "-o", str(tmp_path / "b"), "--skip-bad"]) == 0
    out = capsys.readouterr()
    assert f"{files[1].name}: skipped" in out.err and "(3 of 4 frames, group V)" in out.out
