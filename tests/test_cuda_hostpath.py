"""The CUDA backend's host path (gpuflat/backends/_feed.py) end to end through the pipeline,
on the fake device of test_cuda_streaming (queued work runs only at synchronisation, the
real kernels through the CPU shim): stored FITS bytes converted on the device, levels
measured there, the stack resident between the passes when it fits the device budget, and
everything bit for bit the numba backend's result."""

from __future__ import annotations

import gc
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import cuda_harness as harness
import numpy as np
import pytest
from astropy.io import fits
from fake_device import FakeDevice, same

from gpuflat._config import CombineConfig
from gpuflat._frames import ArrayFrame, open_frames
from gpuflat._pipeline import combine_frames
from gpuflat.backends import NumbaBackend
from gpuflat.backends._cuda import CudaBackend
from gpuflat.backends._kernels import BITPIX_DTYPES
from gpuflat.errors import GpuflatError

pytestmark = pytest.mark.skipif(harness.compiler() is None, reason="no host C++ compiler (g++)")

SHAPE = (240, 16)
MEM = 120e3  # host mem_limit: several bands
RESIDENT = 1e9  # a device budget the stack fits


def streamed_budget(inputs, mask=None, **kw):
    """The device budget under which only the slots fit, not the resident stack."""
    backend = spy(CudaBackend(FakeDevice()))
    _combine(inputs, backend, mask=mask, device_mem_limit=RESIDENT, **kw)
    needs = backend.feeds[0].needs
    return min(needs[False], needs[True] - 1)  # thinner bands when streaming needs more


def spy(backend):
    """Record the feeds the backend opens (``backend.feeds``)."""
    backend.feeds = []
    real = backend.open_feed

    def open_feed(*args, **kwargs):
        backend.feeds.append(real(*args, **kwargs))
        return backend.feeds[-1]

    backend.open_feed = open_feed
    return backend


def write_fits(path, values, bitpix, bscale=1, bzero=0, blank=None):
    """A FITS file whose stored values are exactly ``values`` (any integers or floats of the
    BITPIX's type), with the given BSCALE/BZERO/BLANK cards; written by hand so that nothing
    is rescaled on the way."""
    dtype = BITPIX_DTYPES[bitpix]
    data = np.asarray(values).astype(dtype)
    h = fits.Header()
    h["SIMPLE"] = True
    h["BITPIX"] = bitpix
    h["NAXIS"] = 2
    h["NAXIS1"] = data.shape[1]
    h["NAXIS2"] = data.shape[0]
    if bscale != 1:
        h["BSCALE"] = bscale
    if bzero != 0:
        h["BZERO"] = bzero
    if blank is not None:
        h["BLANK"] = blank
    h["IMAGETYP"] = "FLAT"
    body = data.tobytes()
    body += b"\0" * (-len(body) % 2880)
    Path(path).write_bytes(h.tostring().encode("ascii") + body)
    return path


# stored values for each format: (bitpix, bscale, bzero, blank, stored values maker)
def _ints(lo, hi):
    return lambda rng, k: rng.integers(lo, hi, (k, *SHAPE))


FORMATS = {
    "uint16": (16, 1, 32768, None, _ints(-32768 + 20000, -32768 + 40000)),
    "int16-scaled-blank": (16, 0.5, 1000.0, -32768, _ints(2000, 6000)),
    "uint8": (8, 1, 0, None, _ints(100, 250)),
    "int8-blank": (8, 2.0, -128, 255, _ints(150, 250)),
    "int32-scaled": (32, 0.25, 5.0, -1, _ints(20000, 80000)),
    "uint32": (32, 1, 2**31, None, _ints(-(2**31) + 100000, -(2**31) + 400000)),
    "int64-blank": (64, 1, 0, 7, _ints(1000, 5000)),
    "float32": (-32, 1, 0, None, lambda rng, k: rng.normal(1000, 30, (k, *SHAPE))),
    "float32-scaled": (-32, 1.5, -2.0, None, lambda rng, k: rng.normal(1000, 30, (k, *SHAPE))),
    "float64": (-64, 1, 0, None, lambda rng, k: rng.normal(1000, 30, (k, *SHAPE))),
}


def _files(tmp_path, name, n=15, seed=0):
    bitpix, bscale, bzero, blank, make = FORMATS[name]
    rng = np.random.default_rng(seed)
    stored = make(rng, n)
    gain = rng.uniform(0.8, 1.2, (n, 1, 1))
    if bitpix < 0:
        stored = stored * gain
        stored[:, 3, :5] = np.nan
        stored[2, 5, 5] = np.inf
    else:
        stored[:, 0, :3] = stored[:, 0, :3] * 3  # outliers
        if blank is not None:
            stored[:, 4, 4:9] = blank
    return [write_fits(tmp_path / f"{name}{i}.fits", s, bitpix, bscale, bzero, blank)
            for i, s in enumerate(stored)]  # fmt: skip


def _combine(inputs, backend, mask=None, want=("median",), **kw):
    config = CombineConfig(**kw)
    with ExitStack() as stack:
        frames = open_frames(inputs, stack) if not isinstance(inputs[0], ArrayFrame) else inputs
        return combine_frames(frames, config, backend, bad_pixel_mask=mask, want_levels=want)


def _identical(got, want):
    assert got.backend == "cuda" and want.backend == "cpu"
    assert same(
        (got.image, got.uncertainty, got.count, got.scales, got.rejected),
        (want.image, want.uncertainty, want.count, want.scales, want.rejected),
    )
    assert got.levels.keys() == want.levels.keys()
    for how in want.levels:
        np.testing.assert_array_equal(got.levels[how], want.levels[how])
    assert want.rejected.sum() > 0


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("resident", [True, False])
def test_fits_formats_match_numba(tmp_path, fmt, resident):
    """Stored bytes of every BITPIX, BZERO/BSCALE/BLANK convention, converted on the device:
    bit for bit the numba backend reading through scale_raw; several bands."""
    paths = _files(tmp_path, fmt)
    kw = {"mem_limit": MEM}
    kw["device_mem_limit"] = RESIDENT if resident else streamed_budget(paths, **kw)
    dev = FakeDevice()
    backend = spy(CudaBackend(dev))
    got = _combine(paths, backend, want=("median", "mean"), **kw)
    dev.assert_idle()
    assert [f.resident for f in backend.feeds] == [resident]
    want = _combine(paths, NumbaBackend(), want=("median", "mean"), **kw)
    assert want.plan.nbands > 1
    _identical(got, want)


OPTIONS = {
    "guide": {},
    "mean-scale-std": {"scale": "mean", "center": "mean", "dev": "std", "sigma_low": 2.0},
    "median-combine": {"method": "median", "maxiters": None, "sigma_low": 2.0},
    "no-scale-sum-weights": {"scale": "none", "method": "sum", "weights": tuple(range(1, 16))},
    "extrema": {"nlow": 1, "nhigh": 1, "min_value": 500.0},
    "ccdclip-nkeep": {"clip": "ccdclip", "rdnoise": 5.0, "noise_gain": 1.5, "nkeep": 12},
    "sigma-nkeep": {"sigma_low": 1.0, "sigma_high": 1.0, "nkeep": -3},
    "pclip": {"clip": "pclip", "sigma_low": 2.0, "sigma_high": 2.0},
    "pclip-above-nkeep": {"clip": "pclip", "pclip": 2, "sigma_low": 1.0, "nkeep": 12},
}


@pytest.mark.parametrize("name", OPTIONS)
@pytest.mark.parametrize("budget", ["resident", "streamed"])
def test_arrays_and_masks_match_numba(name, budget):
    """In-memory frames (float32 values staged), CCDData-like masks and a bad-pixel mask,
    resident or streamed, one band or several."""
    rng = np.random.default_rng(3)
    n = 15
    stack = rng.normal(1000, 30, (n, *SHAPE)) * rng.uniform(0.8, 1.2, (n, 1, 1))
    stack[rng.random(stack.shape) < 0.03] *= 20
    stack = stack.astype(np.float32)
    stack[rng.random(stack.shape) < 0.02] = np.nan
    masks = [rng.random(SHAPE) < 0.1 if i % 3 == 0 else None for i in range(n)]
    bad = np.zeros(SHAPE, bool)
    bad[5:9, 2:6] = True
    for mem_limit in (1e8, MEM):
        frames = [
            ArrayFrame(s, name=f"a{i}", mask=m)
            for i, (s, m) in enumerate(zip(stack, masks, strict=True))
        ]
        kw = {"mem_limit": mem_limit, **OPTIONS[name]}
        if budget == "streamed":  # (pass 1 always runs: the median level is wanted)
            kw["device_mem_limit"] = streamed_budget(frames, bad, **kw)
        else:
            kw["device_mem_limit"] = RESIDENT
        dev = FakeDevice()
        backend = spy(CudaBackend(dev))
        got = _combine(frames, backend, mask=bad, **kw)
        dev.assert_idle()
        assert backend.feeds[0].resident == (budget == "resident")
        _identical(got, _combine(frames, NumbaBackend(), mask=bad, **kw))


@pytest.mark.parametrize("scale", ["median", "none"])
def test_each_byte_crosses_once(tmp_path, scale):
    """Resident (pass 1 levels), or streamed without pass 1: the uploads are the stored
    bytes once, plus a few per-frame numbers; banded and streamed with pass 1: twice."""
    paths = _files(tmp_path, "uint16")
    stored = len(paths) * SHAPE[0] * SHAPE[1] * 2
    small = 4096  # scales, level state zeroing
    streamed = streamed_budget(paths, mem_limit=MEM, scale="median")
    for mem_limit, budget, times in ((1e8, RESIDENT, 1), (MEM, RESIDENT, 1), (MEM, streamed, 2)):
        dev = FakeDevice()
        backend = spy(CudaBackend(dev))
        result = _combine(paths, backend, want=(), scale=scale, mem_limit=mem_limit,
                          device_mem_limit=budget)  # fmt: skip
        dev.assert_idle()
        if scale == "none":
            times = 1
        assert stored * times <= dev.uploaded <= stored * times + small, (mem_limit, budget)
        assert (result.plan.nbands > 1) == (mem_limit < 1e6)
        assert backend.feeds[0].resident == (times == 1 and scale == "median")


def test_slots_made_once(tmp_path):
    """Two streams and a fixed set of buffers per combination, however many bands."""
    paths = _files(tmp_path, "int16-scaled-blank")
    counts = []
    budget = streamed_budget(paths, mem_limit=MEM)
    for mem_limit in (MEM, 80e3):
        dev = FakeDevice()
        backend = spy(CudaBackend(dev))
        result = _combine(paths, backend, mem_limit=mem_limit, device_mem_limit=budget)
        assert not backend.feeds[0].resident
        dev.assert_idle()
        counts.append((len(dev.streams), len(dev.keep), result.plan.nbands))
    (s1, k1, b1), (s2, k2, b2) = counts
    assert s1 == s2 == 2 and b2 > b1 > 1 and k1 == k2


def test_device_budget_default_and_too_small(tmp_path):
    paths = _files(tmp_path, "uint16")
    dev = FakeDevice(free=10**9)
    backend = CudaBackend(dev)
    assert backend.device_budget(None) == 0.5 * 10**9 and backend.device_budget(5.0) == 5.0
    with pytest.raises(ValueError, match="device_mem_limit"):
        _combine(paths, backend, device_mem_limit=1000.0)
    dev.assert_idle()
    assert not list(dev.live)
    with pytest.raises(ValueError, match="device_mem_limit"):
        CombineConfig(device_mem_limit=0)
    with pytest.raises(TypeError, match="device_mem_limit"):
        CombineConfig(device_mem_limit="1e9")


@pytest.mark.parametrize(
    "fail_at",
    # the guide's parameters: a band's combination starts with the fast kernel for 15 frames
    [("gpuflat_convert_i16", 3), ("gpuflat_level_hist", 5), ("gpuflat_fast_15", 2)],
)
@pytest.mark.parametrize("budget", ["resident", "streamed"])
def test_failure_mid_band_leaves_nothing_queued(tmp_path, fail_at, budget):
    """A launch that raises in pass 1 or mid-band: the error comes out, nothing is left
    queued on any stream and every device buffer is released before it does."""
    paths = _files(tmp_path, "int16-scaled-blank")
    budget = RESIDENT if budget == "resident" else streamed_budget(paths, mem_limit=MEM)
    dev = FakeDevice(fail_at=fail_at)
    backend = spy(CudaBackend(dev))
    with pytest.raises(RuntimeError, match="injected failure") as info:
        _combine(paths, backend, mem_limit=MEM, device_mem_limit=budget)
    dev.assert_idle()  # both streams were synchronised before the error came out
    (feed,) = backend.feeds
    assert feed.slots == [] and feed.d_stack is None and feed.d_mstack is None
    del info, feed  # what the traceback's frames still point at goes with it
    backend.feeds.clear()
    gc.collect()
    assert not list(dev.live), "device buffers still referenced after the error"


def test_reader_failure_mid_band(tmp_path):
    """A file that turns short while pass 2 reads it: the read error comes out, the device
    is idle, its buffers released."""
    paths = _files(tmp_path, "uint16")
    dev = FakeDevice()
    config = CombineConfig(mem_limit=MEM, device_mem_limit=streamed_budget(paths, mem_limit=MEM))
    backend = spy(CudaBackend(dev))
    with ExitStack() as stack:
        frames = open_frames(paths, stack)
        calls = []
        real = frames[4].read_raw_rows

        def flaky(r0, r1, out):
            calls.append(r0)
            if len(calls) == 3:
                raise OSError("disk gone")
            return real(r0, r1, out)

        frames[4].read_raw_rows = flaky
        with pytest.raises(OSError, match="disk gone"):
            combine_frames(frames, config, backend)
    dev.assert_idle()
    assert not backend.feeds[0].resident and backend.feeds[0].slots == []
    assert len(calls) == 3  # the first read is pass 1's, the third the second band's


_NO_NUMBA = r"""
import sys
sys.path.insert(0, {tests!r})
import numpy as np
from contextlib import ExitStack
from fake_device import FakeDevice
from test_cuda_hostpath import _files
from gpuflat._config import CombineConfig
from gpuflat._frames import ArrayFrame, open_frames
from gpuflat._pipeline import combine_frames
from gpuflat.backends._cuda import CudaBackend
from pathlib import Path
backend = CudaBackend(FakeDevice())
paths = _files(Path({tmp!r}), "int16-scaled-blank")
for scale in ("median", "mean", "none"):
    for budget in (1e9, 2e5):
        with ExitStack() as stack:
            config = CombineConfig(scale=scale, mem_limit=120e3, device_mem_limit=budget)
            combine_frames(open_frames(paths, stack), config, backend, want_levels=("median",))
arrays = [ArrayFrame(np.ones((20, 30), np.float32) * (i + 1), name=str(i)) for i in range(5)]
combine_frames(arrays, CombineConfig(), backend)
loaded = sorted(m for m in sys.modules if m == "numba" or m.startswith("numba.")
                or m == "gpuflat.backends._numba")
print("loaded:", loaded)
assert not loaded, loaded
"""


def test_cuda_path_loads_no_numba(tmp_path):
    """The CUDA backend does the whole job: neither gpuflat's numba kernels nor numba itself
    are imported (a fresh process, so nothing earlier loaded them)."""
    script = _NO_NUMBA.format(tests=str(Path(__file__).parent), tmp=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, check=False)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "loaded: []" in res.stdout


@pytest.mark.parametrize("budget", ["resident", "streamed"])
def test_every_synchronisation_is_needed(tmp_path, budget):
    """Skipping any single synchronisation the host path asks for is caught: a race, work
    left queued, or a wrong result."""
    paths = _files(tmp_path, "int16-scaled-blank", n=5)
    budget = RESIDENT if budget == "resident" else streamed_budget(paths, mem_limit=MEM)
    kw = {"mem_limit": MEM, "device_mem_limit": budget}
    want = _combine(paths, NumbaBackend(), **kw)
    dev = FakeDevice()
    _identical(_combine(paths, CudaBackend(dev), **kw), want)
    assert dev.syncs >= 4
    missed = []
    for k in range(1, dev.syncs + 1):
        fake = FakeDevice({k})
        try:
            got = _combine(paths, CudaBackend(fake), **kw)
            fake.assert_idle()
            _identical(got, want)
        except (AssertionError, GpuflatError):  # a garbage level is noticed too
            continue
        missed.append(k)
    assert not missed, f"skipping synchronisation(s) {missed} of {dev.syncs} goes unnoticed"


@pytest.mark.parametrize("budget", ["resident", "streamed"])
def test_a_streamed_product_on_the_host_path_is_the_numba_result(tmp_path, budget):
    """The host path writing into a streamed product (``_products.StreamedProduct`` as the
    results object, as a run does) instead of the default Planes: the product's planes,
    read back with astropy, are the numba backend's result."""
    from gpuflat._products import StreamedProduct

    paths = _files(tmp_path, "uint16")
    kw = {"mem_limit": MEM}
    kw["device_mem_limit"] = RESIDENT if budget == "resident" else streamed_budget(paths, **kw)
    products = []

    def results(result, shape):
        products.append(StreamedProduct(tmp_path / "product.fits", fits.Header(), shape))
        return products[-1]

    dev = FakeDevice()
    backend = spy(CudaBackend(dev))
    with ExitStack() as stack:
        frames = open_frames(paths, stack)
        got = combine_frames(frames, CombineConfig(**kw), backend, want_levels=("median",),
                             results=results)  # fmt: skip
    dev.assert_idle()
    assert backend.feeds[0].resident == (budget == "resident")
    assert got.backend == "cuda" and got.image is None and len(products) == 1
    path = products[0].write()
    want = _combine(paths, NumbaBackend(), **kw)
    assert want.plan.nbands > 1 and want.rejected.sum() > 0
    np.testing.assert_array_equal(got.scales, want.scales)
    np.testing.assert_array_equal(got.rejected, want.rejected)
    with fits.open(path, checksum=True) as hdul:
        assert same(
            (hdul[0].data.astype(np.float32), hdul["UNCERT"].data.astype(np.float32),
             hdul["NCOMBINE"].data.astype(np.int32)),
            (want.image, want.uncertainty, want.count),
        )  # fmt: skip
        np.testing.assert_array_equal(hdul["MASK"].data, want.mask.astype(np.uint8))
    assert products[0].survivors == want.count.sum() and products[0].empty == want.mask.sum()


@pytest.mark.parametrize("budget", ["resident", "streamed"])
def test_frames_of_mixed_bitpix_match_numba(tmp_path, budget):
    """One combination of frames stored differently (uint16 with BZERO, float32, scaled
    int32 with BLANK, uint8, float64), interleaved: each frame's bytes staged and
    converted at its own segment, bit for bit the numba backend's result."""
    names = ("uint16", "float32", "int32-scaled", "uint8", "float64")
    files = [_files(tmp_path, name, n=3, seed=k) for k, name in enumerate(names)]
    paths = [p for trio in zip(*files, strict=True) for p in trio]  # interleaved
    kw = {"mem_limit": MEM}
    kw["device_mem_limit"] = RESIDENT if budget == "resident" else streamed_budget(paths, **kw)
    dev = FakeDevice()
    backend = spy(CudaBackend(dev))
    got = _combine(paths, backend, want=("median", "mean"), **kw)
    dev.assert_idle()
    assert backend.feeds[0].resident == (budget == "resident")
    want = _combine(paths, NumbaBackend(), want=("median", "mean"), **kw)
    assert want.plan.nbands > 1
    _identical(got, want)
