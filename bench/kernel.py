"""In-process throughput of the numba backend's two hot spots, against NumPy.

    python bench/kernel.py                  # 15 frames of 2048 x 2048
    python bench/kernel.py --frames 40 --size 4096

Prints the combine kernel's input samples per second (guide parameters, outputs reused as
the pipeline does, with and without per-frame rejected counts) and the exact frame median
against ``np.median`` on the same frame. Best of ``--repeat`` runs, after a warm-up call.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gpuflat.backends import _numba
from gpuflat.backends._params import KernelParams


def best(fn, repeat):
    fn()  # warm up: load the compiled code, start the threads
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=15)
    ap.add_argument("--size", type=int, default=2048, help="frames are size x size")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(1)
    n, npix = args.frames, args.size * args.size
    data = rng.normal(1000.0, 30.0, (n, npix)).astype(np.float32)
    data[:, ::997] = 1e5  # an outlier every 997 pixels
    scale = 1.0 / np.median(data, axis=1)
    out = (np.empty(npix), np.empty(npix), np.empty(npix, np.int32))
    rejected = np.zeros(n, np.int64)
    params = KernelParams()
    plain = best(lambda: _numba.combine_band(data, None, scale, None, params, out), args.repeat)
    counted = best(
        lambda: _numba.combine_band(data, None, scale, None, params, out, rejected), args.repeat
    )
    print(f"combine kernel, {n} x {args.size}^2 float32:")
    print(f"  {n * npix / plain / 1e6:7.0f} M samples/s")
    print(f"  {n * npix / counted / 1e6:7.0f} M samples/s with per-frame rejected counts")
    frame = data[0].reshape(args.size, args.size)
    ours = best(lambda: _numba.frame_level(frame, None, "median"), args.repeat)
    theirs = best(lambda: np.median(frame), args.repeat)
    assert _numba.frame_level(frame, None, "median") == np.median(frame.astype(np.float64))
    print(f"frame median, {args.size}^2: {ours * 1e3:.1f} ms (np.median {theirs * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
