"""The numba backend's per-pixel path, taken by lanes holding -0.0, NaN/inf or values
that a scale turns non-finite: one such value among ordinary ones, against the reference."""

import numpy as np
import pytest
from reference import reference_combine

from gpuflat.backends import _numba
from gpuflat.backends._params import KernelParams

METHODS = {"average": 0, "median": 1, "sum": 2}


@pytest.mark.parametrize("method", ["average", "median", "sum"])
@pytest.mark.parametrize("odd", [-0.0, np.nan, np.inf, 3.0e38])
def test_one_odd_value_among_normal_ones(rng, method, odd):
    n, npix = 9, 200
    data = rng.normal(1000.0, 20.0, (n, npix)).astype(np.float32)
    data[:, ::23] = 5e4  # outliers
    data[4, 77] = odd  # a single odd sample; 3e38 * scale 10 overflows to inf
    data[2, 130] = -0.0
    scale = np.full(n, 1.0)
    scale[4] = 10.0 if odd == 3.0e38 else 1.0
    params = KernelParams(method=METHODS[method])
    rejected = np.zeros(n, np.int64)
    image, uncert, count = _numba.combine_band(data, None, scale, None, params, rejected=rejected)
    ref = reference_combine(data, None, scale, method=method, return_rejected=True)
    np.testing.assert_array_equal(count, ref[2])
    np.testing.assert_array_equal(rejected, ref[3])
    np.testing.assert_allclose(image, ref[0], rtol=1e-12, atol=0, equal_nan=True)
    np.testing.assert_allclose(uncert, ref[1], rtol=1e-9, atol=1e-300, equal_nan=True)


@pytest.mark.parametrize("seed", range(6))
def test_small_frame_median_paths_agree(seed):
    """Small frames take a NumPy partition of the radix keys; the radix selection (the
    bracket's fallback on large frames) gives the same on the same values."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 50, (37, 41)).astype(np.float32)  # many ties
    frame[rng.random(frame.shape) < 0.02] = np.nan
    frame[0, :3] = (np.inf, -np.inf, -0.0)
    mask = rng.random(frame.shape) < 0.1 if seed % 2 else None
    bits = np.ascontiguousarray(frame).view(np.uint32).ravel()
    m = np.zeros(bits.size, np.uint8) if mask is None else mask.ravel().astype(np.uint8)
    small = _numba._small_median(bits, m, mask is not None)
    radix = _numba._median_radix(bits, m, mask is not None, 2)
    usable = np.isfinite(frame) & (True if mask is None else ~mask)
    assert small == radix == np.median(frame[usable].astype(np.float64))
    assert _numba.frame_level(frame, mask, "median") == small
