"""The CUDA backend's streaming orchestration, run against a fake device.

The fake device behaves like a GPU seen from the host, only more spitefully:
- queued work (copies, memsets, kernel launches) runs only when its stream is
  synchronised, kernels through the CPU build of the real .cu sources (cuda_harness);
- fresh device memory, pinned buffers and the destination of a queued download hold
  garbage until the work that fills them has run;
- work that runs while another stream still has queued work on the same device memory
  (and one of them writes it) is a race and raises;
- a host buffer changed while a copy from it is still queued raises;
- kernel arguments must have the exact C types of the kernel's parameters.

So a missing synchronisation shows up as an exception or a wrong result, and
``test_every_synchronisation_is_needed`` checks that for each one in turn.
"""

from __future__ import annotations

import math

import cuda_harness as harness
import numpy as np
import pytest
from fake_device import FakeDevice, RaceError, same  # noqa: F401 - used by other tests

from gpuflat.backends._cuda import CudaBackend
from gpuflat.backends._params import KernelParams

pytestmark = pytest.mark.skipif(harness.compiler() is None, reason="no host C++ compiler (g++)")

# -- reference results --------------------------------------------------------------------


def numba_combine(*args, rejected=None):
    from gpuflat.backends import _numba

    return _numba.combine_band(*args, rejected=rejected)


def with_rejected(combine_band, data, *args):
    """``combine_band``'s outputs plus the per-frame rejected counts it adds up."""
    rejected = np.zeros(len(data), np.int64)
    return (*combine_band(data, *args, rejected=rejected), rejected)


def numba_level(frame, mask, how):
    from gpuflat.backends import _numba

    return _numba.frame_level(frame, mask, how)


def band(seed, n, npix):
    rng = np.random.default_rng(seed)
    data = rng.normal(1000.0, 20.0, (n, npix)) * rng.uniform(0.5, 2.0, (n, 1))
    data[rng.random(data.shape) < 0.03] *= 30.0
    data = data.astype(np.float32)
    data[rng.random(data.shape) < 0.03] = np.nan
    mask = (rng.random(data.shape) < 0.05).astype(np.uint8)
    scale = 1.0 / rng.uniform(500.0, 2000.0, n)
    weight = rng.uniform(0.5, 2.0, n)
    return data, mask, scale, weight


CASES = {
    "guide": (15, 1000, 128, True, False, KernelParams()),
    "median-weights": (15, 1000, 256, True, True, KernelParams(method=1, maxiters=-1)),
    "raw-clip": (7, 777, 128, False, True, KernelParams(clip_scaled=0, center=1, dev=1)),
    "one-chunk": (20, 300, None, True, False, KernelParams(nlow=1, nhigh=1)),
    "odd-chunks": (33, 1000, 384, False, False, KernelParams(method=2)),
    "large-stack": (70, 500, 128, True, True, KernelParams(maxiters=-1)),
    "pclip": (15, 1000, 256, True, True, KernelParams(pclip=-0.5, sigma_low=2.0, sigma_high=2.0)),
    "pclip-nkeep-large": (70, 300, 128, True, False, KernelParams(pclip=3.0, nkeep=-2, method=1)),
}


@pytest.mark.parametrize("case", CASES)
def test_combine_band_streams(case):
    n, npix, chunk, use_mask, use_weight, params = CASES[case]
    data, mask, scale, weight = band(npix + n, n, npix)
    mask = mask if use_mask else None
    weight = weight if use_weight else None
    dev = FakeDevice()
    backend = CudaBackend(dev, chunk_pixels=chunk)
    got = with_rejected(backend.combine_band, data, mask, scale, weight, params)
    dev.assert_idle()
    assert same(got, with_rejected(numba_combine, data, mask, scale, weight, params))


def test_combine_band_empty():
    dev = FakeDevice()
    image, uncert, count = CudaBackend(dev).combine_band(
        np.empty((3, 0), np.float32), None, np.ones(3), None, KernelParams()
    )
    assert image.shape == uncert.shape == count.shape == (0,)


@pytest.mark.parametrize("how", ["median", "mean"])
@pytest.mark.parametrize("use_mask", [False, True])
def test_frame_level_streams(how, use_mask):
    rng = np.random.default_rng(5)
    frame = rng.normal(1000.0, 50.0, (123, 97)).astype(np.float32)
    frame[rng.random(frame.shape) < 0.05] = np.nan
    mask = (rng.random(frame.shape) < 0.2).astype(np.uint8) if use_mask else None
    dev = FakeDevice()
    got = CudaBackend(dev).frame_level(frame, mask, how)
    dev.assert_idle()
    want = numba_level(frame, mask, how)
    assert got == want or (math.isnan(got) and math.isnan(want))


@pytest.mark.parametrize(
    ("bitpix", "dtype"), [(16, ">i2"), (32, ">i4"), (-32, ">f4"), (-64, ">f8")]
)
def test_convert_streams(bitpix, dtype):
    raw = (np.arange(-500, 500) * 37).astype(dtype)
    dev = FakeDevice()
    got = CudaBackend(dev).convert(raw, bitpix, 1.5, 7.0)
    dev.assert_idle()
    np.testing.assert_array_equal(got, harness.convert(raw, bitpix, 1.5, 7.0))


def _calls():
    """Each backend call the mutation test runs: (name, fn(backend) -> result, expected)."""
    data, mask, scale, weight = band(1, 15, 1000)
    params = KernelParams(method=0)
    frame = data[0].reshape(40, 25)
    return [
        (
            "combine_band",
            lambda b: b.combine_band(data, mask, scale, weight, params),
            numba_combine(data, mask, scale, weight, params),
        ),
        (
            "combine_band-rejected",
            lambda b: with_rejected(b.combine_band, data, None, scale, None, params),
            with_rejected(numba_combine, data, None, scale, None, params),
        ),
        (
            "combine_band-no-weight",
            lambda b: b.combine_band(data, None, scale, None, params),
            numba_combine(data, None, scale, None, params),
        ),
        ("frame_level-median", lambda b: b.frame_level(frame, None, "median"), None),
        ("frame_level-mean", lambda b: b.frame_level(frame, mask[0].reshape(40, 25), "mean"), None),
        ("convert", lambda b: b.convert(np.arange(300).astype(">i2"), 16, 2.0, 1.0), None),
    ]


def _detected(fn, want, dev):
    try:
        got = fn(CudaBackend(dev, chunk_pixels=128))
        dev.assert_idle()
    except AssertionError:  # RaceError, leftover work, argument checks
        return True
    if isinstance(got, tuple):
        return not same(got, want)
    return not (got == want or (math.isnan(got) and math.isnan(want)))


@pytest.mark.parametrize("call", range(6), ids=[c[0] for c in _calls()])
def test_every_synchronisation_is_needed(call):
    """Skipping any single synchronisation the backend asks for must be caught."""
    name, fn, want = _calls()[call]
    dev = FakeDevice()
    result = fn(CudaBackend(dev, chunk_pixels=128))
    dev.assert_idle()
    if want is None:
        want = result
    else:
        assert same(result, want)
    assert dev.syncs >= 1
    missed = [k for k in range(1, dev.syncs + 1) if not _detected(fn, want, FakeDevice({k}))]
    assert not missed, f"{name}: skipping synchronisation(s) {missed} of {dev.syncs} goes unnoticed"
