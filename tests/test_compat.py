"""gpuflat.ccdproc_compat.combine against ccdproc.combine itself."""

import warnings

import ccdproc
import numpy as np
import pytest
from astropy.nddata import CCDData
from astropy.stats import mad_std
from conftest import flat_stack, write_fits

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
]  # fmt: skip


@pytest.mark.parametrize("mem_limit", [16e9, 2e4])
@pytest.mark.parametrize("case", CASES, ids=range(len(CASES)))
def test_equals_ccdproc(rng, case, mem_limit):
    case = {**case, "mem_limit": case.get("mem_limit", mem_limit)}
    ccds = [CCDData(a.astype(np.float64), unit="adu") for a in flat_stack(rng, n=9, shape=(23, 31))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ccdproc.combine(ccds, **case)
    result = combine(ccds, **case)
    assert result.data.dtype == np.float64
    np.testing.assert_allclose(result.data, expected.data, rtol=1e-13, equal_nan=True)
    np.testing.assert_allclose(
        result.uncertainty.array, expected.uncertainty.array, rtol=1e-12, equal_nan=True
    )
    np.testing.assert_array_equal(result.mask, expected.mask)
    assert result.unit == expected.unit


def test_files_output_file_and_masks(tmp_path, rng):
    stack = flat_stack(rng, n=5, shape=(20, 16))
    paths = [write_fits(tmp_path / f"f{i}.fits", a, BUNIT="adu") for i, a in enumerate(stack)]
    out = tmp_path / "combined.fits"
    case = dict(
        scale=inv_median, sigma_clip=True, sigma_clip_func=np.ma.median, sigma_clip_dev_func=mad_std
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ccdproc.combine(paths, unit="adu", **case)
    result = combine(paths, unit="adu", output_file=out, **case)
    np.testing.assert_allclose(result.data, expected.data, rtol=1e-6)  # scale: float32 medians
    back = CCDData.read(out)
    np.testing.assert_array_equal(back.data, result.data)
    with pytest.raises(FileExistsError, match=r"combined\.fits"):
        combine(paths, unit="adu", output_file=out)
    masked = [CCDData(a.astype(float), unit="adu", mask=rng.random(a.shape) < 0.2) for a in stack]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ccdproc.combine(masked, method="median")
    np.testing.assert_allclose(
        combine(masked, method="median").data, expected.data, rtol=1e-13, equal_nan=True
    )


def test_misspelled_keyword_is_an_error_with_a_suggestion(rng):
    ccds = [CCDData(a, unit="adu") for a in flat_stack(rng, n=3, shape=(4, 4))]
    with pytest.raises(TypeError, match="did you mean 'sigma_clip_dev_func'"):
        combine(ccds, sigma_clip=True, signma_clip_dev_func=mad_std)
