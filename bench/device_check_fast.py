"""The steps of bench/device_check.sh for issue 25 (run them through that script):

- ``fast``: the combine on the device alone, 4096 x 4096 pixels of n = 15, 24 and 40
  frames clipping as flats do (about one pixel in 200), by the fast kernels and their
  lists (the backend's launch sequence, ``_cuda_fast.queue_combine``) and by the general
  kernel: time, G samples/s, GB/s and share of the peak memory bandwidth, the lists'
  lengths, and the two bit for bit the same (and a sample of pixels bit for bit numba's).
  Targets: at least 300 G samples/s at n = 15, 250 G at n = 40;
- ``level``: the median of an 8192 x 8192 frame, upload included (the backend's
  ``frame_level`` from a pageable array), and its parts: the upload from pageable and from
  pinned memory, the kernels alone. Target: at most 5 ms upload included;
- ``cli``: ``gpuflat run --device cuda`` against ``--device cpu`` in fresh processes on W1
  (15 x 2048^2 float32) and W2 (20 x 4096^2 uint16) FITS files: cold (empty CuPy and numba
  caches; the CPU's cold run only while the budget allows) and warm (the run after), and
  the products the same.

Each records its figures under its name in <out>/figures.json, as the other steps do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
H = sys.modules.get("__main__")  # bench/device_check.py: say, check, record, sync, ...


def _peak():
    try:
        from gpuflat.backends._cuda import device_info

        return device_info()["peak_bandwidth_gb_s"]
    except Exception:
        return None


def _timed(cp, fn, repeat=5):
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    fn()
    best = float("inf")
    for _ in range(repeat):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        best = min(best, cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return best


def step_fast():
    import cupy as cp

    from gpuflat.backends import _numba
    from gpuflat.backends._cuda import CupyDevice
    from gpuflat.backends._cuda_fast import kernel_args, queue_combine
    from gpuflat.backends._kernels import BLOCK, combine_kernel
    from gpuflat.backends._params import KernelParams

    say, check = H.say, H.check
    dev = CupyDevice()
    peak = _peak()
    stream = cp.cuda.Stream.null
    figures = {}
    npix = 4096 * 4096
    params = KernelParams()
    gen = cp.ElementwiseKernel("uint64 seed", "float32 x", H._GEN, "gpuflat_check_gen")
    for n in (15, 24, 40):
        d_data = cp.empty((n, npix), cp.float32)
        gen(np.uint64(n), d_data)
        scale = 1.0 / np.linspace(950.0, 1050.0, n)
        d_scale = cp.asarray(scale)
        fast = tuple(cp.empty(npix, t) for t in (cp.float64, cp.float64, cp.int32))
        general = tuple(cp.empty(npix, t) for t in (cp.float64, cp.float64, cp.int32))
        d_list = cp.empty(npix, cp.uint32)
        d_counts = cp.zeros(2, cp.uint32)
        chunk = (d_data, None, npix, *fast)

        def run_fast(chunk=chunk, d_counts=d_counts, d_list=d_list, d_scale=d_scale, n=n):
            d_counts.fill(0)
            queue_combine(dev, stream, [chunk], n=n, stride=npix, scale=d_scale, weight=None,
                          params=params, noise=None, scratch=None, rejected=None,
                          d_list=d_list, d_counts=d_counts)  # fmt: skip

        kernel = combine_kernel(n)
        fn = dev._function("combine.cu", kernel)
        null = np.uint64(0)
        args = (d_data, null, d_scale, null, np.int32(n), np.int64(npix), np.int64(0),
                np.int64(npix), null, *kernel_args(params, n), null, *general, null, null,
                null)  # fmt: skip

        def run_general(fn=fn, args=args):
            fn(((npix + BLOCK - 1) // BLOCK,), (BLOCK,), args)

        t_fast = _timed(cp, run_fast)
        lists = [int(c) for c in d_counts.get()]
        t_general = _timed(cp, run_general, 2)
        same = all(
            bool(cp.all(a.view(cp.uint64 if a.dtype == cp.float64 else a.dtype)
                        == b.view(cp.uint64 if b.dtype == cp.float64 else b.dtype)))
            for a, b in zip(fast, general, strict=True)
        )  # fmt: skip
        # a sample of pixels against numba
        sample = np.arange(0, npix, 4099)
        host = d_data[:, sample].get()
        want = _numba.combine_band(host, None, scale, None, params)
        got = tuple(a[sample].get() for a in fast)
        numba_same = all(
            np.array_equal(g.view(np.uint64) if g.dtype == np.float64 else g,
                           w.view(np.uint64) if w.dtype == np.float64 else w)
            for g, w in zip(got, want, strict=True)
        )  # fmt: skip
        min_bytes = n * npix * 4 + npix * 20
        row = {"fast_s": t_fast, "general_s": t_general, "general_list": lists[0],
               "clip_list": lists[1], "identical_to_general": same,
               "sample_identical_to_numba": numba_same}  # fmt: skip
        for label, t in (("fast", t_fast), ("general", t_general)):
            gbs = min_bytes / t / 1e9
            row[f"{label}_Gsamples_s"] = n * npix / t / 1e9
            row[f"{label}_GB_s"] = gbs
            row[f"{label}_share_of_peak"] = gbs / peak if peak else None
            pct = f", {100 * gbs / peak:.1f}% of peak" if peak else ""
            say(f"n={n} {label}: {t * 1e3:.2f} ms, {n * npix / t / 1e9:.1f} G samples/s, "
                f"{gbs:.0f} GB/s{pct}")  # fmt: skip
        say(f"n={n}: general list {lists[0]} pixels, clip list {lists[1]} "
            f"({100 * lists[1] / npix:.2f}% clip)")  # fmt: skip
        figures[f"n={n}"] = row
        check(same, f"n={n}: the fast kernels give the general kernel's bits")
        check(numba_same, f"n={n}: the fast kernels give numba's bits (sampled pixels)")
        del d_data, fast, general, d_list
        cp.get_default_memory_pool().free_all_blocks()
    for n, target in ((15, 300.0), (40, 250.0)):
        got = figures[f"n={n}"]["fast_Gsamples_s"]
        say(f"target n={n}: {got:.0f} G samples/s (issue 25: at least {target:.0f})")
        figures[f"n={n}"]["target_Gsamples_s"] = target
    H.record("fast", figures)


def step_level():
    import cupy as cp
    import cupyx

    from gpuflat.backends import _numba
    from gpuflat.backends._cuda import CudaBackend, CupyDevice
    from gpuflat.backends._kernels import LEVEL_COPIES, median_from_state, median_launches

    say, check = H.say, H.check
    rng = np.random.default_rng(1)
    frame = rng.normal(1000.0, 30.0, (8192, 8192)).astype(np.float32)
    backend = CudaBackend()
    backend.frame_level(frame, None, "median")
    t_total = H.best_of(lambda: backend.frame_level(frame, None, "median"), 5)
    want = _numba.frame_level(frame, None, "median")
    same = backend.frame_level(frame, None, "median") == want
    d = cp.empty(frame.shape, cp.float32)
    pinned = cupyx.empty_pinned(frame.shape, np.float32)
    pinned[...] = frame
    t_pageable = H.best_of(lambda: (d.set(frame), H.sync()), 5)
    t_pinned = H.best_of(lambda: (d.set(pinned), H.sync()), 5)
    dev = CupyDevice()
    stream = cp.cuda.Stream.null
    d_state = cp.zeros(8, cp.uint32)
    d_hist = cp.zeros(2 * LEVEL_COPIES * 256, cp.uint32)
    d_tot = cp.empty(512, cp.uint32)

    def kernels():
        d_state.fill(0)
        for launch in median_launches(d, None, frame.size, d_state, d_hist, d_tot):
            dev.launch(*launch, stream)

    t_kernels = _timed(cp, kernels)
    kernels_same = median_from_state(d_state.get()) == want
    figures = {"median_s": t_total, "upload_pageable_s": t_pageable,
               "upload_pinned_s": t_pinned, "kernels_s": t_kernels,
               "pinned_upload_plus_kernels_s": t_pinned + t_kernels, "identical": same,
               "target_s": 5e-3}  # fmt: skip
    say(f"median 8192^2: {t_total * 1e3:.2f} ms upload included (target 5 ms); upload "
        f"pageable {t_pageable * 1e3:.2f} ms, pinned {t_pinned * 1e3:.2f} ms; kernels "
        f"{t_kernels * 1e3:.3f} ms")  # fmt: skip
    check(same and kernels_same, "the level is numba's")
    H.record("level", figures)


def _run(args, env, timeout):
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "gpuflat", *args], env=env, timeout=timeout,
                         capture_output=True, text=True, check=False)  # fmt: skip
    return time.perf_counter() - t0, res


def step_cli():
    from astropy.io import fits

    from gpuflat._simulate import simulate_night

    say, check = H.say, H.check
    work = Path(os.environ.get("DEVICE_CHECK_WORK", tempfile.mkdtemp(prefix="gpuflat-dc-")))
    budget_end = time.monotonic() + float(os.environ.get("DEVICE_CHECK_STEP_LEFT", "240"))
    figures = {}
    base = dict(os.environ)
    base["PYTHONPATH"] = str(ROOT) + os.pathsep + base.get("PYTHONPATH", "")
    warm_numba = base.get("NUMBA_CACHE_DIR")  # the background warm-up's, when there is one
    for name, (n, rows, cols, dtype) in {
        "W1": (15, 2048, 2048, "float32"),
        "W2": (20, 4096, 4096, "uint16"),
    }.items():
        night = work / f"cli-{name}"
        simulate_night(night, shape=(rows, cols), n_dome=0, n_twilight=n, dtype=dtype, seed=1)
        row = {}
        products = {}
        for device in ("cuda", "cpu"):
            caches = work / f"cli-caches-{name}-{device}"
            shutil.rmtree(caches, ignore_errors=True)
            env = dict(base)
            env["CUPY_CACHE_DIR"] = str(caches / "cupy")
            env["NUMBA_CACHE_DIR"] = str(caches / "numba")
            out = work / f"cli-out-{name}-{device}"
            args = ["run", str(night), "-o", str(out), "--device", device, "--overwrite", "-q"]
            for kind in ("cold", "warm"):
                left = budget_end - time.monotonic()
                if device == "cpu" and kind == "cold" and left < 150:
                    # numba's cold compile takes minutes: the warm-up's cache instead
                    row["cpu_cold_s"] = None
                    say(f"{name} cpu cold: not run ({left:.0f} s of the step left)")
                    if warm_numba:
                        env["NUMBA_CACHE_DIR"] = warm_numba
                    continue
                try:
                    t, res = _run(args, env, timeout=max(30.0, left - 20))
                except subprocess.TimeoutExpired:
                    row[f"{device}_{kind}_s"] = "timeout"
                    say(f"{name} {device} {kind}: timed out")
                    continue
                ok = res.returncode == 0
                row[f"{device}_{kind}_s"] = t if ok else f"exit {res.returncode}"
                say(f"{name} {device} {kind}: {t:.2f} s (exit {res.returncode})")
                if not ok:
                    say(res.stdout[-1500:], res.stderr[-1500:])
                check(ok, f"{name}: gpuflat run --device {device} ({kind})")
            products[device] = sorted(out.glob("*.fits"))
        same = bool(products.get("cuda")) and len(products["cuda"]) == len(products.get("cpu", []))
        for a, b in zip(products.get("cuda", []), products.get("cpu", []), strict=False):
            with fits.open(a) as fa, fits.open(b) as fb:
                for ha, hb in zip(fa, fb, strict=True):
                    if ha.data is not None:
                        same &= np.array_equal(
                            np.asarray(ha.data).view(np.uint8), np.asarray(hb.data).view(np.uint8)
                        )
        row["products_identical"] = same
        check(same, f"{name}: the products of --device cuda and cpu are the same bits")
        figures[name] = row
        shutil.rmtree(night, ignore_errors=True)
    H.record("cli", figures)
