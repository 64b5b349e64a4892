"""Which combine kernels a band takes on the GPU, and their launches on one stream (no
CuPy here: the device object of ``_cuda.py``, or the tests' fake, does the work).

For the guide's parameters (``fast_eligible``: the numba fast path's test) and up to
``FAST_MAX`` frames, a band's chunk takes the fast kernels of ``kernels/fast.cu``:

1. the list counters zeroed (on the stream);
2. ``gpuflat_fast_<n>`` over every pixel: it writes the pixels it vouches for and lists the
   others, in one buffer (``list``, one entry per pixel of the chunk at most);
3. ``gpuflat_fast_clip`` over the clip list (pixels that clip: their survivors' sums);
4. the general kernel (``gpuflat_combine_16/32/64``, combine.cu) over the general list.

The list kernels learn their lengths on the device, so nothing waits for the host; their
grids are capped (``LIST_GRID`` blocks, grid-stride), as most chunks list few pixels.
Every other band takes the general kernel (``_kernels.combine_kernel``) as before.
"""

from __future__ import annotations

import numpy as np

from ._kernels import BLOCK, combine_kernel
from ._params import KernelParams, pclip_offset

FAST_MAX = 48  # as _fast_cu.FAST_MAX (kernels/fast.cu has gpuflat_fast_1 .. _48)
LIST_GRID = 1024  # blocks of the list kernels at most (grid-stride loops)


def fast_eligible(params: KernelParams, n: int) -> bool:
    """The numba fast path's test (``_numba_fast.fast_eligible``, and no ccdclip, nkeep or
    pclip), restated here so that the CUDA path never imports numba; tests check that they
    agree."""
    p = params
    return (
        1 <= n <= FAST_MAX
        and bool(p.clip_scaled)
        and p.nlow == 0
        and p.nhigh == 0
        and bool(p.sigma)
        and p.center == 0
        and p.dev == 0
        and p.maxiters != 0
        and not p.ccdclip
        and p.nkeep == 0
        and not p.pclip
    )


def fast_kernel(n: int, params: KernelParams) -> str | None:
    """``gpuflat_fast_<n>`` when the band takes the fast kernels, else None."""
    return f"gpuflat_fast_{n}" if fast_eligible(KernelParams(*params), n) else None


def list_bytes(pixels: int, n: int, params: KernelParams) -> int:
    """Device bytes of the list buffer for chunks of ``pixels`` pixels (0: none needed)."""
    return 4 * pixels if fast_kernel(n, params) else 0


def extended(params: KernelParams) -> bool:
    """Whether the band takes the ``gpuflat_combine_x*`` kernels (ccdclip, nkeep, pclip)."""
    p = KernelParams(*params)
    return bool(p.ccdclip or p.nkeep or p.pclip)


def kernel_args(params: KernelParams, n: int) -> tuple:
    """The parameters of the general kernel for ``n`` frames, with their C types."""
    p = KernelParams(*params)
    return (
        np.int32(p.clip_scaled), np.float64(p.min_value), np.float64(p.max_value),
        np.int32(p.nlow), np.int32(p.nhigh), np.int32(p.sigma), np.int32(p.center),
        np.int32(p.dev), np.float64(p.sigma_low), np.float64(p.sigma_high),
        np.int32(p.maxiters), np.int32(p.method), np.int32(p.ccdclip), np.int32(p.nkeep),
        np.int32(pclip_offset(p.pclip, n)),
    )  # fmt: skip


def _blocks(threads: int) -> int:
    return max(1, (threads + BLOCK - 1) // BLOCK)


def queue_combine(dev, stream, chunks, *, n, stride, scale, weight, params, noise, scratch,
                  rejected, d_list=None, d_counts=None, d_status=None):  # fmt: skip
    """Queue the combination of ``chunks`` on ``stream``: each chunk a tuple (data, mask,
    width, image, uncert, count) of device arrays, the chunk's frame i at
    ``data[i * stride : i * stride + width]`` (mask likewise, or None). ``d_list``:
    uint32 [>= the widest chunk] and ``d_counts``: uint32 [2 * len(chunks)] (made here
    when None) for the fast kernels; ``scratch``: gpuflat_combine_n's. Returns the list
    buffers in use (None, None for the general kernel), which the caller must keep until
    the stream is done with them. ``d_status`` (uint8, frame i's at ``i * stride``, one
    chunk): every sample's status is written there by a ``gpuflat_combine_s*`` kernel."""
    p = KernelParams(*params)
    prm = kernel_args(p, n)
    fast = None if d_status is not None else fast_kernel(n, p)
    if any(c[2] >= 1 << 32 for c in chunks):  # the lists hold 32-bit pixel offsets
        raise ValueError("a combine launch covers fewer than 2**32 pixels")
    if fast is None:
        kernel = combine_kernel(n, extended=extended(p), status=d_status is not None)
        for data, mask, w, image, uncert, count in chunks:
            args = (data, mask, scale, weight, np.int32(n), np.int64(stride), np.int64(0),
                    np.int64(w), scratch, *prm, noise, image, uncert, count, rejected, None,
                    None) + ((d_status,) if d_status is not None else ())  # fmt: skip
            dev.launch("combine.cu", kernel, _blocks(w), BLOCK, args, stream)
        return None, None
    if d_list is None:
        d_list = dev.empty(max(c[2] for c in chunks), np.uint32)
    if d_counts is None:
        d_counts = dev.zeros(2 * len(chunks), np.uint32, stream)
    listed = combine_kernel(n)  # the general kernel, over the general list
    for c, (data, mask, w, image, uncert, count) in enumerate(chunks):
        counts = d_counts[2 * c : 2 * c + 2]
        lst = d_list[:w]
        args = (data, mask, scale, weight, np.int64(stride), np.int64(0), np.int64(w),
                np.float64(p.min_value), np.float64(p.max_value), np.float64(p.sigma_low),
                np.float64(p.sigma_high), np.int32(p.maxiters), np.int32(p.method), image,
                uncert, count, lst, counts)  # fmt: skip
        dev.launch("fast.cu", fast, _blocks(w), BLOCK, args, stream)
        grid = min(_blocks(w), LIST_GRID)
        args = (data, scale, weight, np.int32(n), np.int64(stride), np.int64(0), np.int64(w),
                np.int32(p.method), lst, counts, image, uncert, count, rejected)  # fmt: skip
        dev.launch("fast.cu", "gpuflat_fast_clip", grid, BLOCK, args, stream)
        args = (data, mask, scale, weight, np.int32(n), np.int64(stride), np.int64(0),
                np.int64(w), None, *prm, noise, image, uncert, count, rejected, lst,
                counts)  # fmt: skip
        dev.launch("combine.cu", listed, grid, BLOCK, args, stream)
    return d_list, d_counts
