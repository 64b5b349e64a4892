"""The CUDA backend on a real GPU: bit for bit the numba backend's results.

Skipped, with the reason ``available()`` gives (no CuPy, no driver, no device, no NVRTC),
where the CUDA backend cannot run; ``bench/device_check.sh`` runs these on a GPU machine and
counts a skip as a failure there.
"""

from __future__ import annotations

import io
import math

import cuda_harness as harness
import numpy as np
import pytest
from astropy.io import fits

import gpuflat
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
    KernelParams(pclip=-0.5, sigma_low=2.0, sigma_high=2.0),
    KernelParams(pclip=2.0, nkeep=-1, method=1, nlow=1),
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


def _band(n, npix, seed):
    rng = np.random.default_rng(seed)
    data = rng.normal(1000.0, 25.0, (n, npix)) * rng.uniform(0.5, 2.0, (n, 1))
    data[rng.random(data.shape) < 0.03] *= 40.0
    data = data.astype(np.float32)
    data[rng.random(data.shape) < 0.02] = np.nan
    data[:, :50] = np.round(data[:, :50] / 100.0) * 100.0
    mask = (rng.random(data.shape) < 0.03).astype(np.uint8) if n % 2 else None
    scale = 1.0 / rng.uniform(500.0, 2000.0, n)
    weight = rng.uniform(0.5, 2.0, n) if n % 3 == 0 else None
    return data, mask, scale, weight


@pytest.mark.parametrize("n", [3, 15, 40, 65, 150])
@pytest.mark.parametrize("params", PARAMS)
def test_combine_band_rejected_matches_numba(backend, n, params):
    """With the per-frame rejected counters the pipeline always asks for."""
    data, mask, scale, weight = _band(n, 200_003 if n <= 40 else 20_011, n + 100)
    got_rej, want_rej = np.zeros(n, np.int64), np.zeros(n, np.int64)
    got = backend.combine_band(data, mask, scale, weight, params, rejected=got_rej)
    want = _numba.combine_band(data, mask, scale, weight, params, rejected=want_rej)
    assert_identical(got, want)
    np.testing.assert_array_equal(got_rej, want_rej)
    if params == KernelParams() and n >= 15:
        assert want_rej.sum() > 0  # the counters are exercised


def test_combine_band_rejected_small_chunks(backend):
    """Many chunks over both slots: each slot's counters are added exactly once."""
    from gpuflat.backends._cuda import CudaBackend

    data, mask, scale, weight = _band(15, 100_003, 5)
    got_rej, want_rej = np.zeros(15, np.int64), np.full(15, 7, np.int64)
    got_rej += 7  # counters are added to, not overwritten
    chunked = CudaBackend(chunk_pixels=4096)
    got = chunked.combine_band(data, mask, scale, weight, KernelParams(), rejected=got_rej)
    want = _numba.combine_band(data, mask, scale, weight, KernelParams(), rejected=want_rej)
    assert_identical(got, want)
    np.testing.assert_array_equal(got_rej, want_rej)


@pytest.mark.parametrize("scale_kind", ["one", "mixed", "tiny"])
@pytest.mark.parametrize("params", PARAMS)
def test_subnormals_match_numba(backend, scale_kind, params):
    """Subnormal samples and scaled values, signed zeros, NaN payloads: a GPU that flushed
    subnormals to zero (CuPy compiles with -ftz=true) would differ here."""
    rng = np.random.default_rng(len(scale_kind))
    n = 11
    data = harness.special_band(rng, n, 20_000)
    scale = harness.special_scales(rng, n, scale_kind)
    mask = (rng.random(data.shape) < 0.05).astype(np.uint8)
    got_rej, want_rej = np.zeros(n, np.int64), np.zeros(n, np.int64)
    got = backend.combine_band(data, mask, scale, None, params, rejected=got_rej)
    want = _numba.combine_band(data, mask, scale, None, params, rejected=want_rej)
    assert_identical(got, want)
    np.testing.assert_array_equal(got_rej, want_rej)


@pytest.mark.parametrize("how", ["median", "mean"])
def test_frame_level_subnormals_match_numba(backend, how):
    rng = np.random.default_rng(9)
    kinds = ["subnormal", "smallest normal", "signed zero", "nan payload"]
    frame = harness.special_values(rng, (513, 1031), kinds)
    got, want = backend.frame_level(frame, None, how), _numba.frame_level(frame, None, how)
    assert np.float64(got).view(np.uint64) == np.float64(want).view(np.uint64) or (
        how == "median" and got == want  # which zero a zero median is: see test_cuda_kernels
    )
    assert got != 0.0 or how == "median"


PIPELINE_OPTIONS = {
    "guide": {},
    "median-combine": {"method": "median", "maxiters": None, "sigma_low": 3.0, "sigma_high": 3.0},
    "ccdproc-like": {"scale": "mean", "center": "mean", "dev": "std", "sigma_low": 3.0},
    "extrema+minmax": {"nlow": 1, "nhigh": 1, "min_value": 100.0, "max_value": 1e5},
    "sum-weights": {"method": "sum", "weights": [1.0, 2.0, 0.5, 1.5] * 3, "scale": "none"},
}


def _stack(n=12, shape=(301, 257), seed=4):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    optical = 1 - 0.1 * (
        ((yy - shape[0] / 2) / shape[0]) ** 2 + ((xx - shape[1] / 2) / shape[1]) ** 2
    )
    stack = rng.uniform(500.0, 4000.0, (n, 1, 1)) * optical * rng.normal(1, 0.01, (n, *shape))
    stack[rng.random(stack.shape) < 0.01] *= 30.0
    stack = stack.astype(np.float32)
    stack[rng.random(stack.shape) < 0.005] = np.nan
    return stack


def _assert_results_identical(got, want):
    assert got.backend == "cuda" and want.backend == "cpu"
    assert_identical(
        (got.image, got.uncertainty, got.count, got.scales),
        (want.image, want.uncertainty, want.count, want.scales),
    )
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_array_equal(got.rejected, want.rejected)
    assert got.plan == want.plan


@pytest.mark.parametrize("name", PIPELINE_OPTIONS)
def test_pipeline_cuda_matches_cpu(name):
    """gpuflat.combine end to end, several bands: image, uncertainty, count, mask, rejected
    and scales bit for bit those of the CPU backend."""
    stack = _stack()
    kw = {"mem_limit": 3e6, **PIPELINE_OPTIONS[name]}
    want = gpuflat.combine(stack, backend="cpu", **kw)
    got = gpuflat.combine(stack, backend="cuda", **kw)
    assert want.plan.nbands > 1
    _assert_results_identical(got, want)


def test_pipeline_fits_files_cuda_matches_cpu(tmp_path):
    """From uint16 FITS files (BZERO 32768) with a bad-pixel mask, several bands."""
    stack = np.clip(_stack(n=9, shape=(211, 173), seed=8), 0, 60000)
    stack = np.nan_to_num(stack, nan=0.0)
    paths = []
    for i, frame in enumerate(stack):
        hdu = fits.PrimaryHDU(frame.astype(np.uint16))  # astropy writes BZERO = 32768
        hdu.header["IMAGETYP"] = "FLAT"
        hdu.header["FILTER"] = "r"
        paths.append(tmp_path / f"flat{i}.fits")
        hdu.writeto(paths[-1])
    bad = np.zeros(stack.shape[1:], bool)
    bad[10:20, 30:40] = True
    kw = {"mem_limit": 1e6, "mask": bad}
    want = gpuflat.combine(paths, backend="cpu", **kw)
    got = gpuflat.combine(paths, backend="cuda", **kw)
    assert want.plan.nbands > 1
    _assert_results_identical(got, want)


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
@pytest.mark.parametrize(
    ("bscale", "bzero"), [(1, 32768), (2.5, 100.0), (1, 0), (1e-42, 0), (1e-40, 1e-39)]
)
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


HOST_PATH_FORMATS = {  # bitpix, bscale, bzero, blank
    "uint16": (16, 1, 32768, None),
    "int16-scaled-blank": (16, 0.5, 1000.0, -32768),
    "int32-scaled": (32, 0.25, 5.0, -1),
    "float32": (-32, 1, 0, None),
    "float64": (-64, 1, 0, None),
}


@pytest.mark.parametrize("fmt", HOST_PATH_FORMATS)
@pytest.mark.parametrize("device_mem_limit", [None, 4e6])
def test_host_path_fits_cuda_matches_cpu(tmp_path, fmt, device_mem_limit):
    """The host path on the GPU: stored bytes converted and measured on the device, the
    stack resident (default budget) or streamed in thin bands (4 MB): bit for bit the CPU."""
    from test_cuda_hostpath import _identical, write_fits

    bitpix, bscale, bzero, blank = HOST_PATH_FORMATS[fmt]
    stack = _stack(n=11, shape=(401, 333), seed=12)
    stack = np.nan_to_num(stack, nan=0.0)
    if bitpix > 0:
        stack = np.round((np.clip(stack, 0, 15000) - bzero) / bscale)
        if blank is not None:
            stack[:, 7, 3:20] = blank
    paths = [write_fits(tmp_path / f"f{i}.fits", s, bitpix, bscale, bzero, blank)
             for i, s in enumerate(stack)]  # fmt: skip
    kw = {"mem_limit": 20e6, "device_mem_limit": device_mem_limit}
    want = gpuflat.combine(paths, backend="cpu", **kw)
    got = gpuflat.combine(paths, backend="cuda", **kw)
    _identical(got, want)


# -- the prebuilt kernels (kernels/*.fatbin) and NVRTC's: the same results ---------------------


def _nvrtc_backend():
    """A backend whose kernels all come from NVRTC (its loader has no prebuilt kernels)."""
    import cupy

    from gpuflat.backends._cuda import CudaBackend, CupyDevice, KernelLoader

    dev = CupyDevice()
    dev.kernels = KernelLoader(cupy, manifest=None)
    return CudaBackend(device=dev)


def test_kernels_come_prebuilt_where_the_fatbin_has_this_gpus_code(backend):
    """On sm_80/86/89/90 under a CUDA 13 driver every kernel a combination uses comes from
    the fatbin (no NVRTC); elsewhere from the first way of the plan."""
    import cupy

    from gpuflat.backends._kernels import prebuilt_manifest, sass_for

    data, mask, scale, weight = _band(15, 10_007, 1)
    backend.combine_band(data, mask, scale, weight, KernelParams())
    backend.frame_level(data[0].reshape(1, -1), None, "median")
    loader = backend.device.kernels
    device = cupy.cuda.Device().id
    used = {k: w for k, w in loader.ways.items() if k[0] == device}
    assert len(used) >= 3 and set(used.values()) == {loader.plan(device)[0][0]}
    manifest = prebuilt_manifest()
    if (
        sass_for(cupy.cuda.Device().compute_capability, manifest)
        and cupy.cuda.runtime.driverGetVersion() >= manifest["min_driver_sass"]
    ):
        assert set(used.values()) == {"fatbin"}


def _ccdclip(n):
    return KernelParams(
        ccdclip=1, maxiters=-1, sigma_low=3.0, sigma_high=3.0,
        rdnoise=(5.0,) * n, gain=(1.5,) * n, snoise=(0.01,) * n,
    )  # fmt: skip


@pytest.mark.parametrize("n", [3, 15, 40, 65, 150])
@pytest.mark.parametrize("extended", ["plain", "nkeep", "ccdclip", "pclip"])
def test_prebuilt_and_nvrtc_kernels_agree(backend, n, extended):
    """Every combine kernel (16/32/64/n, plain and x), bit for bit, from the fatbin (where
    this GPU has its code) and from NVRTC (CuPy's -ftz=true included)."""
    data, mask, scale, weight = _band(n, 50_021 if n <= 40 else 10_007, n + 7)
    params = {
        "plain": KernelParams(),
        "nkeep": KernelParams(nkeep=2, maxiters=-1, sigma_low=2.0, sigma_high=2.0),
        "ccdclip": _ccdclip(n),
        "pclip": KernelParams(pclip=-0.5, nkeep=3, sigma_low=1.5, sigma_high=1.5),
    }[extended]
    nvrtc = _nvrtc_backend()
    got_rej, want_rej = np.zeros(n, np.int64), np.zeros(n, np.int64)
    got = backend.combine_band(data, mask, scale, weight, params, rejected=got_rej)
    want = nvrtc.combine_band(data, mask, scale, weight, params, rejected=want_rej)
    assert_identical(got, want)
    np.testing.assert_array_equal(got_rej, want_rej)
    assert set(nvrtc.device.kernels.ways.values()) == {"nvrtc"}


def test_prebuilt_and_nvrtc_levels_and_conversions_agree(backend):
    rng = np.random.default_rng(9)
    frame = rng.normal(1000.0, 50.0, (513, 769)).astype(np.float32)
    frame[rng.random(frame.shape) < 0.01] = np.nan
    frame[0, :5] = [1e-40, -1e-41, 0.0, -0.0, 1e-45]  # subnormals and signed zeros
    mask = (rng.random(frame.shape) < 0.1).astype(np.uint8)
    nvrtc = _nvrtc_backend()
    for how in ("median", "mean"):
        for m in (None, mask):
            a, b = backend.frame_level(frame, m, how), nvrtc.frame_level(frame, m, how)
            assert a == b or (math.isnan(a) and math.isnan(b)), (how, m is None)
    raw = rng.normal(0, 5000, 10_000)
    for bitpix in (8, 16, 32, 64, -32, -64):
        dtype = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}[bitpix]
        stored = (np.abs(raw) % 256 if bitpix == 8 else raw).astype(dtype)
        for bscale, bzero in ((1, 0), (2.5, 100.0), (1e-42, 0)):
            a = backend.convert(stored, bitpix, bscale, bzero)
            b = nvrtc.convert(stored, bitpix, bscale, bzero)
            np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
