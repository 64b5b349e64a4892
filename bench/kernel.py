"""In-process throughput of the numba backend's two hot spots, against NumPy.

    python bench/kernel.py                  # 15 frames of 2048 x 2048
    python bench/kernel.py --frames 40 --size 4096

Prints the combine kernel's input samples per second (guide parameters, outputs reused as
the pipeline does, with and without per-frame rejected counts) and the exact frame median
against ``np.median`` on the same frame (and on a 4096 x 4096 frame of uint16 values unless
``--no-uint16``). Best of ``--repeat`` runs, after a warm-up call.

On a shared machine wall-clock times depend on the other work there; the figures in
brackets use the process's CPU time instead (all threads together, so "per CPU second"),
which other processes disturb much less: compare those between versions.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gpuflat.backends import _numba
from gpuflat.backends._params import KernelParams


def best(fn, repeat):
    """(best wall-clock seconds, best CPU seconds of the process) over ``repeat`` calls."""
    fn()  # warm up: load the compiled code, start the threads
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=15)
    ap.add_argument("--size", type=int, default=2048, help="frames are size x size")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-uint16", action="store_true", help="skip the 4096^2 uint16 median")
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
    rate = n * npix / 1e6
    print(f"combine kernel, {n} x {args.size}^2 float32 ({_numba.nb.get_num_threads()} threads):")
    print(f"  {rate / plain[0]:7.0f} M samples/s  ({rate / plain[1]:.0f} M per CPU second)")
    print(
        f"  {rate / counted[0]:7.0f} M samples/s with per-frame rejected counts"
        f"  ({rate / counted[1]:.0f} M per CPU second)"
    )
    frames = [(f"{args.size}^2", data[0].reshape(args.size, args.size))]
    if not args.no_uint16:
        raw = rng.poisson(20000.0, (4096, 4096)).astype(np.uint16)
        frames.append(("4096^2 uint16", raw.astype(np.float32)))
    for name, frame in frames:
        ours = best(lambda f=frame: _numba.frame_level(f, None, "median"), args.repeat)
        theirs = best(lambda f=frame: np.median(f), args.repeat)
        assert _numba.frame_level(frame, None, "median") == np.median(frame.astype(np.float64))
        print(
            f"frame median, {name}: {ours[0] * 1e3:.1f} ms ({ours[1] * 1e3:.1f} ms CPU)"
            f" (np.median {theirs[0] * 1e3:.1f} ms)"
        )


if __name__ == "__main__":
    main()
