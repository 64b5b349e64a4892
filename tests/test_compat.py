"""gpuflat.ccdproc_compat.combine against ccdproc.combine itself."""

import gzip
import warnings

import ccdproc
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData
from astropy.stats import mad_std
from conftest import flat_stack, write_fits
from test_frames_read import write_raw

from gpuflat.ccdproc_compat import combine


def inv_median(a):
    return 1 / np.median(a)


CASES = [
    # the guide's call
    dict(scale=inv_median, sigma_clip=True, sigma_clip_low_thresh=5, sigma_clip_high_thresh=5,
         sigma_clip_func=np.ma.median, sigma_clip_dev_func=mad_std, mem_limit=350e6),
    dict(method="median", scale=inv_median, sigma_clip=True),
    dict(method="sum", sigma_clip=True, sigma_clip_func="median", sigma_clip_dev_func="mad_std"),
    dict(method="average"),
    dict(method="median"),
    dict(method="sum", scale=inv_median),
    dict(minmax_clip=True, minmax_clip_min=600, minmax_clip_max=1800, scale=inv_median),
    dict(clip_extrema=True, nlow=1, nhigh=2, scale=inv_median),
    dict(method="median", clip_extrema=True, nlow=0, nhigh=1),
    dict(weights=np.arange(1.0, 10.0), sigma_clip=True, scale=inv_median),
    dict(method="sum", weights=np.arange(1.0, 10.0)),
    dict(clip_extrema=True, minmax_clip=True, minmax_clip_max=1e4, sigma_clip=True,
         scale=inv_median),
    dict(sigma_clip=True, sigma_clip_func=np.nanmedian, sigma_clip_dev_func=np.nanstd,
         sigma_clip_low_thresh=2),
    dict(sigma_clip=True, sigma_clip_func=lambda a, axis=None: np.nanmedian(a, axis=axis)),
    dict(scale=np.linspace(0.5, 1.5, 9), method="median", sigma_clip=True),
    # astropy's sigma_clip takes None and 0 for its default, 3, and a negative one as it is
    dict(sigma_clip=True, sigma_clip_low_thresh=None, sigma_clip_high_thresh=0,
         sigma_clip_func="median", sigma_clip_dev_func="mad_std"),
    dict(sigma_clip=True, sigma_clip_low_thresh=-1, sigma_clip_func=np.ma.median),
    dict(minmax_clip=True, minmax_clip_min=1800, minmax_clip_max=600),  # min > max: all out
    dict(minmax_clip=True, minmax_clip_max=1500, method="sum"),
    dict(weights=np.arange(1.0, 10.0)[:, None, None] * np.ones((9, 23, 31)), scale=inv_median),
    dict(scale=[1.0, 2.0, -1.0, 0.5, 1.0, 1.0, 3.0, 1.0, 1.0]),  # ccdproc does not check
    dict(method="median", combine_uncertainty_function=ccdproc.sigma_func),
    dict(combine_uncertainty_function=np.ma.std, sigma_clip=True),
]  # fmt: skip


def ccdproc_combine(img_list, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ccdproc.combine(img_list, **kwargs)


def assert_same(result, expected):
    """ccdproc's numbers: image within 1e-12, uncertainty within 1e-10 (relative), the same
    masks, NaN where NaN, dtype, unit and header."""
    assert result.data.dtype == expected.data.dtype
    assert result.uncertainty.array.dtype == expected.uncertainty.array.dtype
    np.testing.assert_allclose(result.data, expected.data, rtol=1e-12, atol=0, equal_nan=True)
    np.testing.assert_allclose(
        result.uncertainty.array, expected.uncertainty.array, rtol=1e-10, atol=0, equal_nan=True
    )
    np.testing.assert_array_equal(result.mask, expected.mask)
    assert result.unit == expected.unit
    assert dict(result.meta) == dict(expected.meta)


@pytest.mark.parametrize("mem_limit", [16e9, 2e4])
@pytest.mark.parametrize("case", CASES, ids=range(len(CASES)))
def test_equals_ccdproc(rng, case, mem_limit):
    case = {**case, "mem_limit": case.get("mem_limit", mem_limit)}
    ccds = [CCDData(a.astype(np.float64), unit="adu") for a in flat_stack(rng, n=9, shape=(23, 31))]
    if "weights" in case and case["weights"].ndim > 1 and mem_limit < 1e6:
        # ccdproc refuses per-pixel weights once it tiles: compare with its untiled result
        expected = ccdproc_combine(ccds, **{**case, "mem_limit": 16e9})
    else:
        expected = ccdproc_combine(ccds, **case)
    result = combine(ccds, **case)
    assert result.data.dtype == np.float64
    assert_same(result, expected)


# the astropy CCD guide's call, as ccdproc actually runs it and as it was meant
GUIDE = dict(method="average", scale=inv_median, sigma_clip=True, sigma_clip_low_thresh=5,
             sigma_clip_high_thresh=5, sigma_clip_func=np.ma.median, mem_limit=350e6)  # fmt: skip
GUIDE_CALLS = {
    "guide-as-run": {**GUIDE, "sigma_clip_dev_func": np.ma.std},
    "guide-as-meant": {**GUIDE, "sigma_clip_dev_func": mad_std},
    "median-strings": dict(
        method="median",
        scale=inv_median,
        sigma_clip=True,
        sigma_clip_func="median",
        sigma_clip_dev_func="mad_std",
    ),
    "nan-safe-scale": {**GUIDE, "scale": lambda a: 1 / np.nanmedian(a)},
}


def write_frames(tmp_path, stack, kind):
    """The stack as FITS files the way cameras and pipelines store them."""
    paths = []
    for i, a in enumerate(stack):
        p = tmp_path / f"{kind}_{i}.fits"
        if kind == "float32":
            write_raw(p, a, BUNIT="adu")
        elif kind == "float64":
            write_raw(p, a.astype(np.float64) * (1 + 1e-7), BUNIT="adu")
        elif kind == "uint16":  # BZERO 32768: the usual camera format
            write_raw(p, (np.round(a).astype(np.int64) - 32768).astype(np.int16), BZERO=32768,
                      BUNIT="adu")  # fmt: skip
        elif kind == "int16-bscale-blank":
            raw = np.clip(np.round((a - 1000) / 0.5), -32767, 32767).astype(np.int16)
            raw[3, 4 + i] = raw[7, 2] = -32768
            write_raw(p, raw, BSCALE=0.5, BZERO=1000, BLANK=-32768, BUNIT="adu")
        elif kind == "uint32":
            write_raw(p, (np.round(a * 1000).astype(np.int64) - 2**31).astype(np.int32),
                      BZERO=2**31, BUNIT="adu")  # fmt: skip
        elif kind == "int8":
            phys = np.clip(np.round(a / 20), -128, 127).astype(np.int16)
            write_raw(p, (phys + 128).astype(np.uint8), BZERO=-128, BUNIT="adu")
        elif kind == "uint16-blank":  # astropy keeps BLANK as a value in unsigned data
            raw = (np.round(a).astype(np.int64) - 32768).astype(np.int16)
            raw[2, 3] = 5
            write_raw(p, raw, BZERO=32768, BLANK=5, BUNIT="adu")
        paths.append(str(p))
    return paths


KINDS = ["float32", "float64", "uint16", "int16-bscale-blank", "uint32", "int8", "uint16-blank"]


@pytest.mark.parametrize("mem_limit", [350e6, 2e4])
@pytest.mark.parametrize("call", list(GUIDE_CALLS))
@pytest.mark.parametrize("kind", KINDS)
def test_files_equal_ccdproc(tmp_path, rng, kind, call, mem_limit):
    """The guide's call and its neighbours on float and integer files, tiled and not: the
    scale callable sees the frame as CCDData.read returns it (float32 medians for BITPIX
    -32), integers are scaled as astropy scales them, BLANK pixels are NaN."""
    stack = flat_stack(rng, n=7, shape=(26, 19))
    stack[2, 5, 6] = stack[4, 5, 6] = 0.0  # a dead pixel in two frames
    paths = write_frames(tmp_path, stack, kind)
    case = {**GUIDE_CALLS[call], "mem_limit": mem_limit}
    expected = ccdproc_combine(paths, **case)
    result = combine(paths, **case)
    assert_same(result, expected)


def test_outputs_and_output_file(tmp_path, rng):
    stack = flat_stack(rng, n=5, shape=(20, 16))
    paths = [write_fits(tmp_path / f"f{i}.fits", a, BUNIT="adu") for i, a in enumerate(stack)]
    out = tmp_path / "combined.fits"
    case = GUIDE_CALLS["guide-as-meant"]
    expected = ccdproc_combine(paths, unit="adu", **case)
    result = combine(paths, unit="adu", output_file=str(out), **case)
    assert_same(result, expected)
    back = CCDData.read(out)
    np.testing.assert_array_equal(back.data, result.data)
    np.testing.assert_array_equal(back.uncertainty.array, result.uncertainty.array)
    # combining again onto the product: the error ccdproc raises (after combining)
    with pytest.raises(OSError) as ours:
        combine(paths, output_file=str(out))
    with pytest.raises(OSError) as theirs:
        ccdproc_combine(paths, output_file=str(out))
    assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))
    combine(paths, output_file=str(out), overwrite_output=True)


def test_input_kinds(tmp_path, rng, monkeypatch):
    stack = flat_stack(rng, n=4, shape=(12, 10))
    paths = [write_fits(tmp_path / f"f{i}.fits", a, BUNIT="adu") for i, a in enumerate(stack)]
    case = GUIDE_CALLS["guide-as-meant"]
    expected = ccdproc_combine(paths, **case)
    assert_same(combine(",".join(paths), **case), expected)  # a comma-separated string
    assert_same(combine(np.array(paths), **case), expected)
    assert_same(combine(tuple(paths), **case), expected)
    assert_same(combine(iter(paths), **case), expected)
    ccds = [CCDData.read(p) for p in paths]
    assert_same(combine(ccds, **case), ccdproc_combine(ccds, **case))
    assert_same(
        combine([paths[0], *ccds[1:]], **case), ccdproc_combine([paths[0], *ccds[1:]], **case)
    )
    # an ImageFileCollection: its files, in its location (whatever the working directory);
    # ccdproc 2.5 itself raises ValueError for one (it is not a list and not iterable)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    collection = ccdproc.ImageFileCollection(str(tmp_path))
    assert_same(combine(collection, **case), expected)
    only_three = ccdproc.ImageFileCollection(
        str(tmp_path), filenames=["f0.fits", "f1.fits", "f2.fits"]
    )
    assert_same(combine(only_three, **case), ccdproc_combine(paths[:3], **case))
    # gzip-compressed files, as archives ship them
    gzipped = []
    for p in paths:
        with open(p, "rb") as src, gzip.open(p + ".gz", "wb") as dst:
            dst.write(src.read())
        gzipped.append(p + ".gz")
    assert_same(combine(gzipped, **case), expected)
    # a single name is one file (ccdproc splits it into its characters)
    assert_same(combine(paths[0]), ccdproc_combine(paths[:1]))


def test_ccddata_read_keywords(tmp_path, rng):
    """hdu by name, name and version, index; unit; a MASK extension; fits.open keywords."""
    stack = flat_stack(rng, n=4, shape=(14, 9))
    paths, masked = [], []
    for i, a in enumerate(stack):
        hdul = fits.HDUList([
            fits.PrimaryHDU(),
            fits.ImageHDU(a[:, ::-1] + 5, name="IM"),
            fits.ImageHDU(a, fits.Header({"BUNIT": "adu"}), name="SCI"),
            fits.ImageHDU(a[::-1] * 2, fits.Header({"BUNIT": "electron"}), name="SCI", ver=2),
        ])  # fmt: skip
        hdul[0].header["BUNIT"] = "ADU"
        hdul.writeto(tmp_path / f"mef{i}.fits")
        paths.append(str(tmp_path / f"mef{i}.fits"))
        ccd = CCDData(a, unit="electron", mask=rng.random(a.shape) < 0.2)
        ccd.write(tmp_path / f"masked{i}.fits")
        masked.append(str(tmp_path / f"masked{i}.fits"))
    case = GUIDE_CALLS["guide-as-meant"]
    for kwargs in (
        {},  # the first extension with data, with the primary header's BUNIT
        {"hdu": "SCI"},
        {"hdu": "sci"},
        {"hdu": ("SCI", 2)},
        {"hdu": 3},
        {"hdu": "IM", "unit": "adu"},
        {"hdu": "SCI", "unit": "photon"},
        {"hdu": "SCI", "memmap": False},
        {"hdu": "SCI", "uint": False},
    ):
        assert_same(combine(paths, **case, **kwargs), ccdproc_combine(paths, **case, **kwargs))
    for kwargs in ({}, {"hdu_mask": None}, {"unit": "adu"}):
        for call in (case, {"method": "median"}):
            assert_same(
                combine(masked, **call, **kwargs), ccdproc_combine(masked, **call, **kwargs)
            )


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "float32"])
@pytest.mark.parametrize("call", ["guide-as-meant", "median-strings"])
def test_dtype(tmp_path, rng, dtype, call):
    stack = flat_stack(rng, n=6, shape=(15, 12))
    paths = write_frames(tmp_path, stack, "uint16")
    case = {**GUIDE_CALLS[call], "dtype": dtype}
    expected = ccdproc_combine(paths, **case)
    result = combine(paths, **case)
    assert result.data.dtype == np.dtype(dtype)
    assert_same(result, expected)


def test_any_positive_mem_limit(rng):
    """ccdproc tiles as finely as needed and never refuses a limit: the issue's five
    520x536 frames under 1e6 bytes, and even 1 byte."""
    ccds = [CCDData(a, unit="adu") for a in flat_stack(rng, n=5, shape=(520, 536))]
    case = GUIDE_CALLS["guide-as-meant"]
    for mem_limit in (1e6, 1):
        assert_same(combine(ccds, **{**case, "mem_limit": mem_limit}),
                    ccdproc_combine(ccds, **{**case, "mem_limit": 1e6}))  # fmt: skip


def test_nan_and_inf_samples(rng):
    """ccdproc's callables propagate NaN (no clipping at that pixel) and average an inf."""
    stack = flat_stack(rng, n=7, shape=(9, 8)).astype(np.float64)
    stack[1, 2, 3] = np.nan
    stack[:, 4, 4] = np.nan
    stack[2, 5, 5] = np.inf
    stack[3, 6, 1] = -np.inf
    ccds = [CCDData(a, unit="adu") for a in stack]
    for case in [*GUIDE_CALLS.values(), {"method": "sum"}, {"minmax_clip": True,
                 "minmax_clip_max": 1e9}]:  # fmt: skip
        assert_same(combine(ccds, **case), ccdproc_combine(ccds, **case))


def _error(call):
    try:
        call()
    except Exception as exc:  # the point is to compare them
        return type(exc), str(exc)
    return None


def test_errors_are_ccdprocs(tmp_path, rng):
    """Where a user's code could match an exception, it is ccdproc's class and message."""
    stack = flat_stack(rng, n=3, shape=(6, 5))
    ccds = [CCDData(a, unit="adu") for a in stack]
    good = [write_fits(tmp_path / f"g{i}.fits", a, BUNIT="adu") for i, a in enumerate(stack)]
    no_unit = write_fits(tmp_path / "nounit.fits", stack[0])
    other = CCDData(stack[0], unit="electron")
    small = CCDData(stack[0][:, :4], unit="adu")
    calls = {
        "not a list": ((5,), {}),
        "None": ((None,), {}),
        "method": ((ccds,), {"method": "mode"}),
        "empty": (([],), {}),
        "no unit": (([no_unit, good[1]],), {}),
        "no unit later": (([good[0], no_unit],), {}),
        "missing file": (([good[0], str(tmp_path / "nope.fits")],), {}),
        "missing first": (([str(tmp_path / "nope.fits")],), {}),
        "missing hdu": ((good,), {"hdu": "SCI"}),
        "hdu out of range": ((good,), {"hdu": 4}),
        "units differ": (([*ccds, other],), {}),
        "shapes differ": (([*ccds, small],), {}),
        "weights list": ((ccds,), {"weights": [1, 2, 3]}),
        "weights length": ((ccds,), {"weights": np.ones(4)}),
        "weights 2-D": ((ccds,), {"weights": np.ones((3, 2))}),
        "scale length": ((ccds,), {"scale": [1.0, 2.0]}),
        "scale scalar": ((ccds,), {"scale": 2.0}),
        "cenfunc": ((ccds,), {"sigma_clip": True, "sigma_clip_func": "mode"}),
        "not scaled": ((good,), {"do_not_scale_image_data": True}),
    }
    for name, (args, kwargs) in calls.items():
        theirs = _error(lambda: ccdproc_combine(*args, **kwargs))  # noqa: B023
        ours = _error(lambda: combine(*args, **kwargs))  # noqa: B023
        assert theirs is not None, name
        assert ours is not None, name
        assert issubclass(ours[0], theirs[0]), (name, ours, theirs)
        assert ours[1] == theirs[1], (name, ours, theirs)


def test_misspelled_keyword_is_an_error_with_a_suggestion(rng):
    ccds = [CCDData(a, unit="adu") for a in flat_stack(rng, n=3, shape=(4, 4))]
    # the guide's own typo: ccdproc hands it to CCDData.read, which ignores it
    with pytest.raises(TypeError, match="did you mean 'sigma_clip_dev_func'") as info:
        combine(ccds, sigma_clip=True, signma_clip_dev_func=mad_std)
    assert "ccdproc ran with the default sigma_clip_dev_func" in str(info.value)
    with pytest.raises(TypeError, match="did you mean 'sigma_clip_low_thresh'"):
        combine(ccds, sigma_clip_low_tresh=2)
    with pytest.raises(TypeError, match="did you mean 'hdu_mask'"):
        combine(ccds, hdu_msk=None)
    combine(ccds, hdu="SCI", unit="adu", memmap=False)  # CCDData.read's keywords: fine


def test_blank_zero_is_kept_as_ccdproc_keeps_it(tmp_path, rng):
    """BLANK = 0 on scaled int16 data: astropy (so ccdproc) keeps the stored 0s as values
    (BZERO), it does not make them NaN; the drop-in reads them the same and combines to
    ccdproc's numbers."""
    stack = flat_stack(rng, n=5, shape=(14, 11))
    paths = []
    for i, a in enumerate(stack):
        raw = np.clip(np.round((a - 1000) / 0.5), -32767, 32767).astype(np.int16)
        raw[3, 4 + i] = raw[7, 2] = raw[0, :] = 0  # stored 0 = BLANK
        paths.append(
            write_raw(tmp_path / f"b{i}.fits", raw, BSCALE=0.5, BZERO=1000, BLANK=0, BUNIT="adu")
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read = CCDData.read(paths[0])
    assert read.data[7, 2] == 1000.0 and not np.isnan(read.data).any()
    for case in (GUIDE_CALLS["guide-as-meant"], {"method": "median"}, {"method": "sum"}):
        for mem_limit in (350e6, 2e4):
            call = {**case, "mem_limit": mem_limit}
            assert_same(combine(paths, **call), ccdproc_combine(paths, **call))
