"""The CUDA backend's host path: stored bytes in, each byte across PCIe once.

A :class:`Feed` serves one combination (``CudaBackend.open_feed``). It owns two *slots*,
made once and reused for every frame and band: each has a stream, pinned staging buffers
that the pipeline's reader fills straight from the files (``FitsFrame.read_raw_rows``: the
stored big-endian bytes, no conversion, no extra copy) and device buffers. On the device,
``convert.cu`` turns the bytes into float32 (exactly ``_frames.scale_raw``), ``level.cu``
measures each frame in pass 1 from that same upload, and ``combine.cu`` combines each band
in pass 2. When the whole stack (and its masks) fits the device-memory budget, pass 1
converts every frame into a device-resident stack and pass 2 combines it where it lies:
nothing is read or uploaded twice.

Like the rest of the backend it drives a device object (``_cuda.CupyDevice``, or the
tests' fake whose queued work runs only at synchronisation); no CuPy here. Every queued
piece of work is synchronised before the host memory it touches is reused or released,
and :meth:`Feed.close` synchronises both streams and drops every buffer, on success and
on every error path.
"""

from __future__ import annotations

import math

import numpy as np

from ._cuda_fast import FAST_MAX, fast_kernel, queue_combine
from ._kernels import median_from_state, median_launches
from ._params import KernelParams, noise_table

#: the share of the free device memory a combination may use unless told otherwise
DEFAULT_DEVICE_SHARE = 0.5
SCRATCH_BYTES = 64 << 20  # gpuflat_combine_n's scratch per slot
MAX_CHUNK = 1 << 30  # pixels per combine launch at most


def _blocks(threads: int, block: int) -> int:
    return max(1, (threads + block - 1) // block)


class _FeedSlot:
    """One slot: a stream, pinned staging and outputs, device buffers; what is queued on it."""

    def __init__(self, dev, n, *, stage_bytes, work_pixels, mask_bytes, out_pixels,
                 scratch_bytes, level_rows, counters):  # fmt: skip
        self.stream = dev.stream()
        self.h_stage = dev.pinned(stage_bytes, np.uint8)
        self.d_raw = dev.empty(stage_bytes, np.uint8)
        self.d_work = dev.empty(work_pixels, np.float32) if work_pixels else None
        self.h_mask = dev.pinned(mask_bytes, np.uint8) if mask_bytes else None
        self.d_mask = dev.empty(mask_bytes, np.uint8) if mask_bytes else None
        self.h_out = self.d_out = None
        if out_pixels:
            kinds = (np.float64, np.float64, np.int32)  # image, uncertainty, count
            self.h_out = tuple(dev.pinned(out_pixels, t) for t in kinds)
            self.d_out = tuple(dev.empty(out_pixels, t) for t in kinds)
        self.d_scratch = dev.empty(scratch_bytes, np.uint8) if scratch_bytes else None
        self.d_rejected = dev.zeros(n, np.uint64, self.stream) if counters else None
        self.d_scale = self.d_weight = self.d_noise = None
        # the fast kernels' lists (``_cuda_fast``): made at the first combination that
        # takes them
        self.d_list = self.d_counts = self.h_counts0 = self.d_lists = None
        if level_rows:
            self.h_zero = dev.pinned(8, np.uint32)
            self.h_zero[...] = 0
            self.d_state = dev.empty(8, np.uint32)
            self.d_hist = dev.zeros(2 * 32 * 256, np.uint32, self.stream)  # GF_COPIES = 32
            self.d_tot = dev.empty(512, np.uint32)  # level.cu's totals per digit
            self.d_sums = dev.empty(level_rows, np.float64)
            self.d_counts = dev.empty(level_rows, np.int64)
            self.h_state = dev.pinned(8, np.uint32)
            self.h_sums = dev.pinned(level_rows, np.float64)
            self.h_counts = dev.pinned(level_rows, np.int64)
        self.busy = False  # work is queued on the stream
        self.levels = None  # (frame, hows) whose results the pinned level buffers will hold
        self.outputs = None  # (destinations, pixels) the pinned outputs will hold


class Feed:
    """The host path of one combination on a device (see the module docstring).

    ``formats``: per frame, a ``_frames.RawFormat`` (its stored bytes are staged, converted
    on the device) or None (float32 values are staged, from ``read_rows``). ``rows``: the
    band height of pass 2; ``pass1``: whether frame levels are measured; ``hows``: which.
    """

    def __init__(self, backend, formats, shape, *, rows, masked, pass1, hows=("median",),
                 device_mem_limit=None):  # fmt: skip
        self.backend = backend
        self.dev = dev = backend.device
        self.formats = list(formats)
        self.n = n = len(self.formats)
        self.shape = nrows, cols = shape
        self.masked = masked
        self.hows = tuple(hows) if pass1 else ()
        self.block = backend.block
        sizes = [4 if f is None else np.dtype(f.dtype).itemsize for f in self.formats]
        self.itemsize = max(sizes)
        frame_pixels = nrows * cols
        per_mask = 1 if masked else 0

        def scratch_width(rows):
            if n <= 64:  # only gpuflat_combine_n / _xn use scratch
                return 0
            return min(rows * cols, max(self.block, SCRATCH_BYTES // (9 * n)))

        def need(resident, rows):
            """(device bytes, staging pixels, work pixels) for bands of ``rows`` rows."""
            band_pixels = rows * cols
            stage = frame_pixels if pass1 else 0
            work = 0 if resident else frame_pixels if pass1 else 0
            if not resident:
                stage = max(stage, n * band_pixels)
                work = max(work, n * band_pixels)
            slot = (
                stage * (self.itemsize + per_mask)  # raw bytes, masks
                + work * (4 + per_mask)  # float32 values, masks
                + band_pixels * 20  # outputs
                + (band_pixels * 4 if n <= FAST_MAX else 0)  # the fast kernels' lists
                + 9 * n * scratch_width(rows)
                + (nrows * 16 if pass1 else 0)
            )
            stack = n * frame_pixels * (4 + per_mask) if resident else 0
            return 2 * slot + stack, stage, work

        budget = backend.device_budget(device_mem_limit)
        #: device bytes with the stack resident (pass 1 only) and streamed, at ``rows``
        self.needs = {True: need(True, rows)[0] if pass1 else math.inf, False: need(False, rows)[0]}
        self.resident = bool(pass1) and self.needs[True] <= budget
        if not self.resident and self.needs[False] > budget:
            # streamed in thinner bands than the host's (results do not depend on it)
            fit = [r for r in range(1, rows) if need(False, r)[0] <= budget]
            if not fit:
                raise ValueError(
                    f"device_mem_limit: {budget:.4g} bytes of device memory are too few for "
                    f"{n} frames of {nrows}x{cols} (at least {need(False, 1)[0]:.4g} are "
                    "needed); raise device_mem_limit"
                )
            rows = fit[-1]
        #: the band height pass 2 must use (at most the one asked for)
        self.rows = rows
        total, stage, work = need(self.resident, rows)
        band_pixels = rows * cols
        scratch_w = scratch_width(rows)
        # pixels per launch: the fast kernels' lists hold 32-bit offsets (MAX_CHUNK)
        self.chunk = min(scratch_w or band_pixels, MAX_CHUNK)
        self.device_bytes = total
        self.slots = []
        self.d_stack = self.d_mstack = None
        self._levels = {how: [math.nan] * n for how in self.hows}
        self._rejected = None
        self._closed = False
        try:
            if self.resident:
                self.d_stack = dev.empty(n * frame_pixels, np.float32)
                self.d_mstack = dev.empty(n * frame_pixels, np.uint8) if masked else None
            for _ in range(2):
                self.slots.append(
                    _FeedSlot(
                        dev, n, stage_bytes=stage * self.itemsize, work_pixels=work,
                        mask_bytes=stage * per_mask, out_pixels=band_pixels,
                        scratch_bytes=9 * n * scratch_w, level_rows=nrows if pass1 else 0,
                        counters=True,
                    )
                )  # fmt: skip
        except BaseException:
            self.close()
            raise

    # -- context management -----------------------------------------------------------------

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        """Wait for every stream, then drop every buffer (also after an error: nothing may
        still be queued on memory that goes back to the pools)."""
        if self._closed:
            return
        self._closed = True
        error = None
        for slot in self.slots:
            if slot.busy:
                try:
                    self.dev.synchronize(slot.stream)
                    slot.busy = False
                except BaseException as exc:  # keep waiting for the other stream
                    error = error or exc
        for slot in self.slots:  # whoever still holds a slot holds no buffer through it
            slot.__dict__.clear()
        self.slots = []
        self.d_stack = self.d_mstack = None
        if error is not None:
            raise error

    # -- host staging -------------------------------------------------------------------------

    def acquire(self, k: int) -> None:
        """Wait until slot ``k``'s queued work is done, so that its staging can be refilled;
        collect what that work produced (levels, a band's outputs)."""
        slot = self.slots[k]
        if slot.busy:
            self.dev.synchronize(slot.stream)
            slot.busy = False
        if slot.levels is not None:
            self._collect_levels(slot)
        if slot.outputs is not None:
            dests, width = slot.outputs
            for dest, h in zip(dests, slot.h_out, strict=True):
                dest[...] = h[:width].reshape(dest.shape)
            slot.outputs = None

    def stage(self, k: int, i: int, rows: int, seg: int | None = None) -> np.ndarray:
        """Where frame ``i``'s ``rows`` rows go in slot ``k``'s staging (segment ``seg``,
        default ``i``): a uint8 buffer of their stored bytes for a frame with a raw format,
        else a float32 ``[rows, cols]`` array."""
        seg = i if seg is None else seg
        cols = self.shape[1]
        start = seg * rows * cols * self.itemsize
        fmt = self.formats[i]
        if fmt is None:
            buf = self.slots[k].h_stage[start : start + rows * cols * 4]
            return buf.view(np.float32).reshape(rows, cols)
        return self.slots[k].h_stage[start : start + rows * cols * np.dtype(fmt.dtype).itemsize]

    def mask_stage(self, k: int, rows: int, seg: int) -> np.ndarray:
        """Where a frame's mask rows (uint8, nonzero = bad) go in slot ``k``'s staging."""
        pixels = rows * self.shape[1]
        return self.slots[k].h_mask[seg * pixels : (seg + 1) * pixels]

    # -- queued work ----------------------------------------------------------------------------

    def _to_device(self, k, i, seg, rows, dst) -> None:
        """Queue the upload of frame ``i``'s rows staged in slot ``k`` (segment ``seg``) and
        their conversion into the device float32 array ``dst``."""
        dev = self.dev
        slot = self.slots[k]
        fmt = self.formats[i]
        pixels = rows * self.shape[1]
        if fmt is None:
            src = self.stage(k, i, rows, seg).reshape(-1)
            dev.upload(dst, src, slot.stream)
            return
        size = np.dtype(fmt.dtype).itemsize
        start = seg * pixels * self.itemsize
        src = slot.h_stage[start : start + pixels * size]
        d_raw = slot.d_raw[start : start + pixels * size]
        dev.upload(d_raw, src, slot.stream)
        self.backend.launch_convert(d_raw, dst, pixels, fmt, slot.stream)

    def measure(self, k: int, i: int) -> None:
        """Pass 1: frame ``i`` (whole, staged in slot ``k``'s first segment, its mask too when
        masked) to the device, converted, kept there when resident, and measured."""
        slot = self.slots[k]
        dev, stream = self.dev, slot.stream
        nrows, cols = self.shape
        pixels = nrows * cols
        slot.busy = True
        if self.resident:
            d_frame = self.d_stack[i * pixels : (i + 1) * pixels]
            d_fmask = None if not self.masked else self.d_mstack[i * pixels : (i + 1) * pixels]
        else:
            d_frame = slot.d_work[:pixels]
            d_fmask = None if not self.masked else slot.d_mask[:pixels]
        self._to_device(k, i, 0, nrows, d_frame)
        if d_fmask is not None:
            dev.upload(d_fmask, slot.h_mask[:pixels], stream)
        launch, block = dev.launch, self.block
        for how in self.hows:
            if how == "mean":
                args = (d_frame, d_fmask, np.int64(nrows), np.int64(cols), slot.d_sums,
                        slot.d_counts)  # fmt: skip
                launch("level.cu", "gpuflat_level_rowsum", _blocks(nrows, block), block, args,
                       stream)  # fmt: skip
                dev.download(slot.h_sums, slot.d_sums, stream)
                dev.download(slot.h_counts, slot.d_counts, stream)
            elif how == "median":
                dev.upload(slot.d_state, slot.h_zero, stream)
                for one in median_launches(d_frame, d_fmask, pixels, slot.d_state, slot.d_hist,
                                           slot.d_tot, block):  # fmt: skip
                    launch(*one, stream)
                dev.download(slot.h_state, slot.d_state, stream)
            else:
                raise ValueError(f"how must be 'median' or 'mean', not {how!r}")
        slot.levels = i

    def _collect_levels(self, slot) -> None:
        i = slot.levels
        slot.levels = None
        for how in self.hows:
            if how == "median":
                self._levels[how][i] = median_from_state(slot.h_state)
            else:
                k = int(slot.h_counts.sum())
                total = float(np.cumsum(slot.h_sums)[-1]) if len(slot.h_sums) else 0.0
                self._levels[how][i] = total / k if k else float("nan")

    def levels(self) -> dict[str, list[float]]:
        """Every frame's levels, once each frame was measured (waits for both slots)."""
        for k in range(len(self.slots)):
            self.acquire(k)
        return {how: list(v) for how, v in self._levels.items()}

    def load(self, k: int, r0: int, r1: int) -> None:
        """Pass 2, stack not resident: the band's frames (staged in slot ``k``, segment i
        for frame i; masks too) to the device, converted."""
        slot = self.slots[k]
        slot.busy = True
        pixels = (r1 - r0) * self.shape[1]
        for i in range(self.n):
            self._to_device(k, i, i, r1 - r0, slot.d_work[i * pixels : (i + 1) * pixels])
        if self.masked:
            self.dev.upload(
                slot.d_mask[: self.n * pixels], slot.h_mask[: self.n * pixels], slot.stream
            )

    def combine(self, k, r0, r1, scale, weight, params, dests, rejected) -> None:
        """Queue the combination of rows [r0, r1) on slot ``k``: from the resident stack, or
        from what :meth:`load` put in the slot. The outputs land in ``dests`` (image,
        uncertainty, count rows) when the slot is next acquired; the rejected counts are
        added to ``rejected`` by :meth:`finish`."""
        dev = self.dev
        slot = self.slots[k]
        stream = slot.stream
        slot.busy = True
        n, cols = self.n, self.shape[1]
        width = (r1 - r0) * cols
        if slot.d_scale is None:  # per slot, so that no stream waits for another
            slot.d_scale = dev.empty(n, np.float64)
            slot.h_scale = dev.pinned(n, np.float64)
            slot.h_scale[...] = scale
            dev.upload(slot.d_scale, slot.h_scale, stream)
            if weight is not None:
                slot.d_weight = dev.empty(n, np.float64)
                slot.h_weight = dev.pinned(n, np.float64)
                slot.h_weight[...] = weight
                dev.upload(slot.d_weight, slot.h_weight, stream)
            noise = noise_table(KernelParams(*params), n)
            if noise.size:  # ccdclip's per-frame noise model
                slot.d_noise = dev.empty(noise.size, np.float64)
                slot.h_noise = dev.pinned(noise.size, np.float64)
                slot.h_noise[...] = noise
                dev.upload(slot.d_noise, slot.h_noise, stream)
        self._rejected = rejected
        if self.resident:
            data, masks = self.d_stack, self.d_mstack
            stride, offset = self.shape[0] * cols, r0 * cols
        else:
            data, masks, stride, offset = slot.d_work, slot.d_mask, width, 0
        p = KernelParams(*params)
        nchunks = -(-self.rows * cols // self.chunk)  # a band's chunks at most
        if slot.d_list is None and fast_kernel(n, p):  # the fast kernels' lists, per slot
            slot.d_list = dev.empty(self.chunk, np.uint32)
            slot.d_counts = dev.empty(2 * nchunks, np.uint32)
            slot.h_counts0 = dev.pinned(2 * nchunks, np.uint32)
            slot.h_counts0[...] = 0
        if slot.d_list is not None:  # the lists start empty
            dev.upload(slot.d_counts, slot.h_counts0, stream)
        chunks = []
        for p0 in range(0, width, self.chunk):
            w = min(self.chunk, width - p0)
            # the chunk's frames: base + offset + p0 + i * stride, for i < n
            lo, hi = offset + p0, offset + p0 + (n - 1) * stride + w
            chunks.append((data[lo:hi], None if masks is None else masks[lo:hi], w,
                           *(d[p0 : p0 + w] for d in slot.d_out)))  # fmt: skip
        slot.d_lists = queue_combine(
            dev, stream, chunks, n=n, stride=stride, scale=slot.d_scale, weight=slot.d_weight,
            params=p, noise=slot.d_noise, scratch=slot.d_scratch, rejected=slot.d_rejected,
            d_list=slot.d_list, d_counts=slot.d_counts,
        )  # fmt: skip
        for h, d in zip(slot.h_out, slot.d_out, strict=True):
            dev.download(h[:width], d[:width], stream)
        slot.outputs = (dests, width)

    def finish(self) -> None:
        """Wait for both slots, land their outputs and add their rejected counts."""
        for k in range(len(self.slots)):
            self.acquire(k)
        if self._rejected is None:
            return
        for slot in self.slots:
            h = self.dev.pinned(self.n, np.uint64)
            self.dev.download(h, slot.d_rejected, slot.stream)
            slot.busy = True
            self.dev.synchronize(slot.stream)
            slot.busy = False
            self._rejected += h.astype(np.int64)
