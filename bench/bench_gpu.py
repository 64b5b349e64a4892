"""Throughput of the CUDA backend's combine_band on a GPU (bench/device_check.sh measures more).

Prints, per combine option set: the end-to-end time of ``CudaBackend.combine_band`` on a
host band (pinned staging, transfers and kernel, overlapped over two streams), the kernel
alone on device-resident data, input samples per second, and the bandwidth the kernel
achieves on the bytes it must move at least (the stack once, the three outputs once)
against the device's peak. Optionally the numba backend on the same band (--cpu).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gpuflat.backends._cuda import BLOCK, CudaBackend, CupyDevice, combine_kernel, device_info
from gpuflat.backends._cuda_fast import kernel_args
from gpuflat.backends._params import KernelParams

OPTIONS = {
    "guide (median/mad_std, average)": KernelParams(),
    "median combine": KernelParams(method=1),
    "ccdproc (mean/std, raw clip)": KernelParams(clip_scaled=0, center=1, dev=1),
    "iterate to convergence": KernelParams(maxiters=-1, sigma_low=3.0, sigma_high=3.0),
}


def kernel_seconds(data, scale, params, repeat):
    """The combine kernel alone on a device-resident stack (CUDA events)."""
    import cupy as cp

    n, npix = data.shape
    name = combine_kernel(n)
    fn = CupyDevice()._function("combine.cu", name)
    d_data = cp.asarray(data)
    d_scale = cp.asarray(scale)
    image = cp.empty(npix, cp.float64)
    uncert = cp.empty(npix, cp.float64)
    count = cp.empty(npix, cp.int32)
    scratch = cp.empty(9 * n * npix, cp.uint8) if name == "gpuflat_combine_n" else np.uint64(0)
    null = np.uint64(0)
    args = (
        d_data, null, d_scale, null, np.int32(n), np.int64(npix), np.int64(0), np.int64(npix),
        scratch, *kernel_args(params, n), null, image, uncert, count,
        cp.zeros(n, cp.uint64),  # per-frame rejected counters, as the pipeline asks for
        null, null,  # no general list (a band)
    )  # fmt: skip
    grid = (npix + BLOCK - 1) // BLOCK
    fn((grid,), (BLOCK,), args)  # warm up (and compile)
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    best = float("inf")
    for _ in range(repeat):
        start.record()
        fn((grid,), (BLOCK,), args)
        stop.record()
        stop.synchronize()
        best = min(best, cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=15)
    ap.add_argument("--size", type=int, default=4096, help="frames are size x size")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpu", action="store_true", help="also time the numba backend")
    args = ap.parse_args(argv)

    info = device_info()
    peak = info["peak_bandwidth_gb_s"]
    print(
        f"device: {info['name']}  {info['memory_bytes'] / 2**30:.0f} GiB  "
        f"peak {peak:.0f} GB/s  CuPy {info['cupy_version']}  "
        f"CUDA runtime {info['cuda_runtime_version']} driver {info['cuda_driver_version']}"
    )
    n, npix = args.frames, args.size * args.size
    rng = np.random.default_rng(0)
    data = (rng.normal(1000.0, 25.0, (n, npix)) * rng.uniform(0.5, 2.0, (n, 1))).astype(np.float32)
    data[rng.random(data.shape) < 0.01] *= 30.0
    scale = 1.0 / np.median(data, axis=1).astype(np.float64)
    samples = n * npix
    min_bytes = samples * 4 + npix * (8 + 8 + 4)
    backend = CudaBackend()
    backend.combine_band(data[:, :4096], None, scale, None, KernelParams())  # compile, warm up
    print(f"{n} frames x {args.size} x {args.size} float32 ({samples * 4 / 2**30:.2f} GiB)")
    head = (
        f"{'options':34} {'end-to-end s':>12} {'kernel s':>9} {'Gsamples/s':>10} "
        f"{'kernel GB/s':>11} {'% peak':>6}"
    )
    if args.cpu:
        head += f" {'numba s':>8}"
    print(head)
    for label, params in OPTIONS.items():
        t_e2e = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            backend.combine_band(data, None, scale, None, params)
            t_e2e = min(t_e2e, time.perf_counter() - t0)
        t_k = kernel_seconds(data, scale, params, args.repeat)
        bw = min_bytes / t_k / 1e9
        row = (
            f"{label:34} {t_e2e:12.3f} {t_k:9.4f} {samples / t_k / 1e9:10.2f} "
            f"{bw:11.0f} {100 * bw / peak if peak else float('nan'):6.1f}"
        )
        if args.cpu:
            from gpuflat.backends import _numba

            t0 = time.perf_counter()
            _numba.combine_band(data, None, scale, None, params)
            row += f" {time.perf_counter() - t0:8.2f}"
        print(row)


if __name__ == "__main__":
    main()
