"""The fake CUDA device the streaming and host-path tests drive the CUDA backend with.

It behaves like a GPU seen from the host, only more spitefully:
- queued work (copies, memsets, kernel launches) runs only when its stream is
  synchronised, kernels through the CPU build of the real .cu sources (cuda_harness);
- fresh device memory, pinned buffers and the destination of a queued download hold
  garbage until the work that fills them has run;
- work that runs while another stream still has queued work on the same device memory
  (and one of them writes it) is a race and raises;
- a host buffer changed while a copy from it is still queued raises;
- kernel arguments must have the exact C types of the kernel's parameters.

A plain module (not a test file), so that a fresh process can import it without loading
anything else, numba in particular.
"""

from __future__ import annotations

import ctypes
import weakref
from typing import ClassVar

import cuda_harness as harness
import numpy as np

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

    def __init__(self, skip_sync=(), *, free=1 << 40, fail_at=None):
        self.free = free  # bytes of free device memory it reports
        self.fail_at = fail_at  # (kernel name, the how-manieth launch of it) raises
        self.launches: dict[str, int] = {}
        self.uploaded = 0  # bytes queued for upload so far
        self.live = weakref.WeakSet()  # device buffers still referenced
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
        out = FakeArray(a)
        self.live.add(out)
        return out

    def free_memory(self):
        return self.free

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
        self.uploaded += src.nbytes

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
        self.launches[name] = self.launches.get(name, 0) + 1
        if self.fail_at is not None and self.fail_at == (name, self.launches[name]):
            raise RuntimeError(f"injected failure: launch {self.launches[name]} of {name}")

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


def same(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        if g.dtype.kind == "f":
            np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
            g, w = g[~np.isnan(g)], w[~np.isnan(w)]
        if not np.array_equal(g.view(f"u{g.itemsize}"), w.view(f"u{w.itemsize}")):
            return False
    return True
