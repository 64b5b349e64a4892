"""The CUDA backend on a real GPU: bit for bit the numba backend's results.

Skipped (with the reason) where CuPy or a CUDA device is missing; `bench/gpu.sh` runs
these on a GPU machine.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from astropy.io import fits

from gpuflat.backends import _numba
from gpuflat.backends._cuda import available
from gpuflat.backends._params import KernelParams

_OK, _WHY = available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _OK, reason=_WHY)]


@pytest.fixture(scope="module")
def backend():
    from gpuflat.backends._cuda import CudaBackend

    return CudaBackend()


def assert_identical(got, want):
    """Bit for bit, except that any NaN equals any NaN (a GPU's 0/0 has another payload)."""
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        if g.dtype.kind == "f":
            np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
            g, w = g[~np.isnan(g)], w[~np.isnan(w)]
        np.testing.assert_array_equal(g.view(f"u{g.itemsize}"), w.view(f"u{w.itemsize}"))


PARAMS = [
    KernelParams(),
    KernelParams(method=1),
    KernelParams(method=2, maxiters=-1, sigma_low=2.0, sigma_high=2.0),
    KernelParams(clip_scaled=0, center=1, dev=1, sigma_low=3.0, sigma_high=3.0),
    KernelParams(clip_scaled=0, method=1, nlow=1, nhigh=2, maxiters=-1),
    KernelParams(min_value=500.0, max_value=3000.0, center=1, dev=0, maxiters=3),
]


@pytest.mark.parametrize("n", [1, 3, 15, 16, 17, 40, 64, 65, 150])
@pytest.mark.parametrize("params", PARAMS)
def test_combine_band_matches_numba(backend, n, params):
    rng = np.random.default_rng(n)
    npix = 300_001 if n <= 17 else 20_011
    data = rng.normal(1000.0, 25.0, (n, npix)) * rng.uniform(0.5, 2.0, (n, 1))
    data[rng.random(data.shape) < 0.02] *= 40.0
    data = data.astype(np.float32)
    data[rng.random(data.shape) < 0.02] = np.nan
    data[:, :50] = np.round(data[:, :50] / 100.0) * 100.0  # ties, MAD = 0
    mask = (rng.random(data.shape) < 0.03).astype(np.uint8) if n % 2 else None
    scale = 1.0 / rng.uniform(500.0, 2000.0, n)
    weight = rng.uniform(0.5, 2.0, n) if n % 3 == 0 else None
    got = backend.combine_band(data, mask, scale, weight, params)
    assert_identical(got, _numba.combine_band(data, mask, scale, weight, params))


def test_combine_band_small_chunks_match(backend):
    from gpuflat.backends._cuda import CudaBackend

    rng = np.random.default_rng(1)
    data = rng.normal(1000.0, 25.0, (15, 100_003)).astype(np.float32)
    scale = np.ones(15)
    want = _numba.combine_band(data, None, scale, None, KernelParams())
    chunked = CudaBackend(chunk_pixels=4096).combine_band(data, None, scale, None, KernelParams())
    assert_identical(chunked, want)


@pytest.mark.parametrize("how", ["median", "mean"])
def test_frame_level_matches_numba(backend, how):
    rng = np.random.default_rng(2)
    frame = rng.normal(1000.0, 50.0, (2048, 2049)).astype(np.float32)
    frame[rng.random(frame.shape) < 0.01] = np.nan
    mask = (rng.random(frame.shape) < 0.1).astype(np.uint8)
    for m in (None, mask):
        got = backend.frame_level(frame, m, how)
        want = _numba.frame_level(frame, m, how)
        assert got == want or (math.isnan(got) and math.isnan(want))


@pytest.mark.parametrize(("dtype", "bitpix"), [(np.int16, 16), (np.int32, 32), (np.float32, -32)])
@pytest.mark.parametrize(("bscale", "bzero"), [(1, 32768), (2.5, 100.0), (1, 0)])
def test_convert_matches_astropy(backend, dtype, bitpix, bscale, bzero):
    rng = np.random.default_rng(3)
    raw = (rng.normal(0, 5000, 100_000)).astype(dtype)
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BSCALE"] = bscale
    hdu.header["BZERO"] = bzero
    buf = io.BytesIO()
    hdu.writeto(buf)
    with fits.open(io.BytesIO(buf.getvalue()), do_not_scale_image_data=True) as f:
        raw_be = np.array(f[0].data).astype(f[0].data.dtype.newbyteorder(">"))
    with fits.open(io.BytesIO(buf.getvalue())) as f:
        want = np.array(f[0].data).astype(np.float32)
    np.testing.assert_array_equal(backend.convert(raw_be, bitpix, bscale, bzero), want)


def test_device_info():
    from gpuflat.backends._cuda import device_info

    info = device_info()
    assert info["name"] and info["memory_bytes"] > 0 and info["cupy_version"]
