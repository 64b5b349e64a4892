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

import ctypes
import math
from typing import ClassVar

import cuda_harness as harness
import numpy as np
import pytest

from gpuflat.backends._cuda import CudaBackend
from gpuflat.backends._params import KernelParams

pytestmark = pytest.mark.skipif(harness.compiler() is None, reason="no host C++ compiler (g++)")

GARBAGE = 0xA5


class RaceError(AssertionError):
    pass


class FakeArray:
    """Device memory: readable by queued work only, never by the host."""

    def __init__(self, a: np.ndarray):
        self.a = a

    shape = property(lambda self: self.a.shape)
    dtype = property(lambda self: self.a.dtype)
    nbytes = property(lambda self: self.a.nbytes)

    def reshape(self, *shape):
        return FakeArray(self.a.reshape(*shape))

    def __getitem__(self, index):
        return FakeArray(self.a[index])

    def __array__(self, *args, **kwargs):
        raise TypeError("device memory is not readable from the host")

    def span(self):
        start = self.a.ctypes.data
        return start, start + self.a.nbytes


class Stream:
    def __init__(self, ident):
        self.ident = ident
        self.queue: list[Op] = []


class Op:
    def __init__(self, what, run, reads=(), writes=()):
        self.what, self.run, self.reads, self.writes = what, run, list(reads), list(writes)


def _overlap(spans1, spans2):
    return any(a0 < b1 and b0 < a1 for a0, a1 in spans1 for b0, b1 in spans2)


class FakeDevice:
    """The device interface of gpuflat.backends._cuda.CupyDevice, deferred and strict."""

    _TYPES: ClassVar[dict] = {"i": np.int32, "q": np.int64, "d": np.float64}

    def __init__(self, skip_sync=()):
        self.streams: list[Stream] = []
        self.pinned_spans: list[tuple[int, int]] = []
        self.syncs = 0  # synchronisations requested so far
        self.skip_sync = set(skip_sync)  # the how-manieth ones to ignore (mutation tests)
        self.keep = []  # host memory the fake hands out stays alive

    # allocation
    def stream(self):
        s = Stream(len(self.streams))
        self.streams.append(s)
        return s

    def pinned(self, shape, dtype):
        a = np.empty(shape, dtype)
        a.view(np.uint8)[...] = GARBAGE
        self.keep.append(a)
        self.pinned_spans.append((a.ctypes.data, a.ctypes.data + a.nbytes))
        return a

    def empty(self, shape, dtype):
        a = np.empty(shape, dtype)
        a.view(np.uint8)[...] = GARBAGE
        self.keep.append(a)
        return FakeArray(a)

    def zeros(self, shape, dtype, stream):
        d = self.empty(shape, dtype)
        stream.queue.append(Op("memset", lambda: d.a.fill(0), writes=[d.span()]))
        return d

    # queued work
    def upload(self, dst, src, stream):
        assert isinstance(dst, FakeArray) and isinstance(src, np.ndarray)
        assert dst.shape == src.shape and dst.dtype == src.dtype, (dst.shape, src.shape)
        assert dst.a.flags.c_contiguous and src.flags.c_contiguous
        expected = src.copy()

        def run():
            if not np.array_equal(src.view(np.uint8), expected.view(np.uint8)):
                raise RaceError("a host buffer changed while a copy from it was queued")
            dst.a[...] = src

        stream.queue.append(Op("upload", run, writes=[dst.span()]))

    def download(self, dst, src, stream):
        assert isinstance(src, FakeArray) and isinstance(dst, np.ndarray)
        assert dst.shape == src.shape and dst.dtype == src.dtype
        assert dst.flags.c_contiguous and src.a.flags.c_contiguous
        start = dst.ctypes.data
        assert any(p0 <= start and start + dst.nbytes <= p1 for p0, p1 in self.pinned_spans), (
            "asynchronous download into pageable host memory"
        )
        dst.view(np.uint8)[...] = GARBAGE  # undefined until the copy has run

        def run():
            dst[...] = src.a

        stream.queue.append(Op("download", run, reads=[src.span()]))

    def launch(self, source, name, grid, block, args, stream):
        sig = harness.SIGNATURES[name]
        assert source in harness.SOURCES and name in (harness.KERNELS / source).read_text()
        assert len(args) == len(sig), (name, len(args))
        cargs, reads, writes = [], [], []
        for pos, (code, a) in enumerate(zip(sig, args, strict=True)):
            if code == "P":
                assert a is None or isinstance(a, FakeArray), (name, pos, a)
                if a is not None:
                    assert a.a.flags.c_contiguous, (name, pos)
                    (writes if pos in harness.WRITES[name] else reads).append(a.span())
                cargs.append(ctypes.c_void_p(None if a is None else a.a.ctypes.data))
            else:
                want = self._TYPES[code]
                assert type(a) is want, f"{name} argument {pos}: {type(a).__name__}, not {want}"
                cargs.append(harness._CTYPES[code](a.item()))
        assert isinstance(grid, int) and isinstance(block, int) and grid >= 1 and block >= 1

        def run():
            harness.launch(name, grid, block, cargs)

        stream.queue.append(Op(name, run, reads, writes))

    def synchronize(self, stream):
        self.syncs += 1
        if self.syncs in self.skip_sync:
            return
        while stream.queue:
            op = stream.queue.pop(0)
            for other in self.streams:
                if other is stream:
                    continue
                for pending in other.queue:
                    if _overlap(op.writes, pending.reads + pending.writes) or _overlap(
                        op.reads, pending.writes
                    ):
                        raise RaceError(f"{op.what} races with {pending.what} on another stream")
            op.run()

    def assert_idle(self):
        pending = [op.what for s in self.streams for op in s.queue]
        assert not pending, f"work left queued when the call returned: {pending}"


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


def same(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        if g.dtype.kind == "f":
            np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
            g, w = g[~np.isnan(g)], w[~np.isnan(w)]
        if not np.array_equal(g.view(f"u{g.itemsize}"), w.view(f"u{w.itemsize}")):
            return False
    return True


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
