"""The steps of bench/device_check.sh, one subcommand each (run them through that script).

Every step prints what it measured, appends its figures to ``<out>/figures.json`` and exits
0 when everything it checked held, 1 otherwise. Steps: ``env``, ``compile``, ``sanitizer``
(which runs ``sanitize-case``, small launches of every kernel, under compute-sanitizer),
``gpu-tests``, ``gpu-pipeline``, ``pipeline``, ``index64``, ``subnormal``, ``throughput``,
and from bench/device_check_fast.py ``fast``, ``level``, ``cli``; ``warm`` compiles
numba's code ahead of them (run in the background by the script).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # cuda_harness: the special-value bands

KERNEL_FILES = ("combine.cu", "level.cu", "convert.cu", "fast.cu")
# the fast kernels the compile step loads (all 49 through NVRTC would take a minute)
FAST_SAMPLE = {f"gpuflat_fast_{n}" for n in (1, 15, 16, 17, 24, 33, 40, 48)} | {"gpuflat_fast_clip"}
OUT = Path(os.environ.get("DEVICE_CHECK_OUT", tempfile.gettempdir()))
FAILED: list[str] = []


def say(*args):
    print(*args, flush=True)


def check(ok: bool, what: str) -> bool:
    say(("  ok    " if ok else "  FAIL  ") + what)
    if not ok:
        FAILED.append(what)
    return ok


def record(step: str, figures: dict) -> None:
    """Merge ``figures`` under ``step`` into <out>/figures.json."""
    path = OUT / "figures.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(step, {}).update(figures)
    path.write_text(json.dumps(data, indent=1, default=str))


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit, any NaN equal to any NaN (a GPU's NaN payloads may differ)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind != "f":
        return bool(np.array_equal(a, b))
    na, nb = np.isnan(a), np.isnan(b)
    if not np.array_equal(na, nb):
        return False
    u = f"u{a.itemsize}"
    return bool(np.array_equal(a[~na].view(u), b[~nb].view(u)))


def sync():
    import cupy as cp

    cp.cuda.Device().synchronize()


def best_of(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# -- env ------------------------------------------------------------------------------------


def step_env():
    from gpuflat.backends._cuda import available, device_info

    ok, why = available()
    say(f"available(): {ok}: {why}")
    figures = {"available": ok, "reason": why, "python": sys.version.split()[0]}
    for mod in ("numpy", "numba", "astropy", "cupy"):
        try:
            figures[mod] = __import__(mod).__version__
        except Exception as exc:  # report, do not stop
            figures[mod] = f"not importable: {exc}"
    if ok:
        figures |= device_info()
    for k, v in figures.items():
        say(f"  {k}: {v}")
    record("env", figures)
    check(ok, "the CUDA backend can run here")


# -- compile --------------------------------------------------------------------------------


def _elf(blob: bytes) -> bytes | None:
    """The ELF image inside a CuPy cache file (after its hash, before what CuPy appends):
    a 64-bit ELF ends with its section or its program header table."""
    at = blob.find(b"\x7fELF")
    if at < 0:
        return None
    elf = blob[at:]

    def u(a, b):
        return int.from_bytes(elf[a:b], "little")

    end = max(
        u(0x28, 0x30) + u(0x3A, 0x3C) * u(0x3C, 0x3E), u(0x20, 0x28) + u(0x36, 0x38) * u(0x38, 0x3A)
    )
    return elf[:end] if 0 < end <= len(elf) else elf


def step_compile():
    """Every kernel through CuPy as the backend compiles it: time, registers, local memory;
    then CuPy's cached cubins through cuobjdump: no .FTZ instruction."""
    import cupy as cp

    from gpuflat.backends._cuda import CupyDevice

    dev = CupyDevice()
    rows = {}
    t0 = time.perf_counter()
    say(f"{'kernel':24} {'regs':>5} {'local B':>8} {'shared B':>8} {'const B':>8} {'max thr':>7}")
    for source in KERNEL_FILES:
        text = (ROOT / "kernels" / source).read_text()
        for name in re.findall(r'extern "C" __global__ void (\w+)\(', text):
            if source == "fast.cu" and name not in FAST_SAMPLE:
                continue
            fn = dev._function(source, name)
            a = fn.attributes
            rows[name] = {
                k: a.get(k)
                for k in (
                    "num_regs",
                    "local_size_bytes",
                    "shared_size_bytes",
                    "const_size_bytes",
                    "max_threads_per_block",
                    "binary_version",
                    "ptx_version",
                )
            }
            say(
                f"{name:24} {a.get('num_regs'):>5} {a.get('local_size_bytes'):>8} "
                f"{a.get('shared_size_bytes'):>8} {a.get('const_size_bytes'):>8} "
                f"{a.get('max_threads_per_block'):>7}"
            )
            check(a.get("max_threads_per_block", 0) >= 128, f"{name} launches 128 threads")
    seconds = time.perf_counter() - t0
    say(f"compiled and loaded in {seconds:.2f} s (CuPy {cp.__version__})")
    figures = {"kernels": rows, "compile_s": seconds}
    for name, r in rows.items():  # as tests/test_cuda_kernels.py asks of nvcc's build
        cap = name.rsplit("_", 1)[1].lstrip("x")
        # the sort buffer (double[CAP]), nothing else (the fast kernels: nothing at all)
        local = name.startswith("gpuflat_combine_") and cap.isdigit()
        most = 8 * int(cap) if local else 0
        check(r["local_size_bytes"] <= most, f"{name}: local memory {r['local_size_bytes']} B")
    default = os.environ.get("CUPY_CACHE_DIR", Path.home() / ".cupy" / "kernel_cache")
    cache = Path(getattr(cp.cuda.compiler, "get_cache_dir", lambda: default)())
    cuobjdump = shutil.which("cuobjdump")
    beside = Path(cuobjdump or "/").with_name("nvdisasm")
    nvdisasm = shutil.which("nvdisasm") or (str(beside) if beside.is_file() else None)
    if cuobjdump is None:
        say("cuobjdump not on PATH: the cached cubins are not disassembled")
    else:
        # CuPy caches a cubin, or PTX where it leaves the last step to the driver
        ftz, seen, ptx, files = 0, 0, 0, 0
        for f in sorted(cache.rglob("*")):
            if not f.is_file():
                continue
            files += 1
            blob = f.read_bytes()
            elf = _elf(blob)
            if elf is None:
                if b".target" in blob and b".version" in blob:
                    ptx += 1
                    ftz += len(re.findall(rb"\.ftz\b", blob))
                continue
            tmp = OUT / "cupy_kernel.cubin"
            tmp.write_bytes(elf)
            for tool in (cuobjdump, "-sass"), (nvdisasm, "--print-code"):
                if tool[0] is None:
                    continue
                res = subprocess.run([*tool, str(tmp)], capture_output=True, text=True)
                if res.returncode == 0:
                    seen += 1
                    ftz += len(re.findall(r"\.FTZ\b", res.stdout))
                    break
                say(f"  {' '.join(tool)} {f.name}: exit {res.returncode}: {res.stderr[-200:]}")
            tmp.unlink()
        figures |= {"cache_files": files, "cubins_disassembled": seen, "ptx_read": ptx,
                    "ftz_instructions": ftz}  # fmt: skip
        say(
            f"CuPy's cache {cache}: {files} file(s), {seen} cubin(s) disassembled, {ptx} PTX "
            f"read, {ftz} flush-to-zero instruction(s)"
        )
        if seen + ptx == 0:
            # seen on the first H200 (CuPy 14.2, its NVRTC from the CUDA 13.2 wheels): the
            # toolkit's cuobjdump and nvdisasm 13.0 call the cubins "invalid ELF". Not a
            # failure of gpuflat: the subnormal step checks the behaviour on the device
            # and tests/test_cuda_kernels.py the machine code of NVRTC 12 and 13 builds.
            say("  NOT CHECKED: no cubin here could be disassembled (see above)")
        check(ftz == 0, "no flush-to-zero instruction in what CuPy built (that was read)")
    record("compile", figures)


# -- pipeline end to end --------------------------------------------------------------------

PIPELINE = {
    "guide": {},
    "median-combine": {"method": "median", "maxiters": None, "sigma_low": 3.0, "sigma_high": 3.0},
    "ccdproc-like": {"scale": "mean", "center": "mean", "dev": "std", "sigma_low": 3.0},
    "extrema+minmax": {"nlow": 2, "nhigh": 1, "min_value": 100.0, "max_value": 1e5},
    "sum-weights": {"method": "sum", "weights": [1.0, 2.0, 0.5, 1.5] * 6, "scale": "none"},
    "n=70 (global scratch)": {"frames": 70},
}


def _stack(n, shape, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    optical = 1 - 0.1 * (((yy / shape[0]) - 0.5) ** 2 + ((xx / shape[1]) - 0.5) ** 2)
    stack = (rng.uniform(500.0, 4000.0, (n, 1, 1)) * optical).astype(np.float32)
    stack *= rng.normal(1, 0.01, (n, *shape)).astype(np.float32)
    stack[rng.random(stack.shape) < 0.01] *= 30.0
    stack[rng.random(stack.shape) < 0.002] = np.nan
    return stack


def _compare_results(label, got, want):
    same = {
        "image": bits_equal(got.image, want.image),
        "uncertainty": bits_equal(got.uncertainty, want.uncertainty),
        "count": bits_equal(got.count, want.count),
        "mask": bits_equal(got.mask, want.mask),
        "rejected": got.rejected is not None and bits_equal(got.rejected, want.rejected),
        "scales": bits_equal(got.scales, want.scales),
    }
    check(all(same.values()), f"{label}: cuda == cpu bit for bit {same}")
    return all(same.values())


def step_pipeline():
    import gpuflat

    figures = {}
    for label, opts in PIPELINE.items():
        opts = dict(opts)
        n = opts.pop("frames", 24)
        stack = _stack(n, (1531, 1283), seed=len(label))
        kw = {"mem_limit": 60e6 if n < 50 else 150e6, **opts}
        t0 = time.perf_counter()
        want = gpuflat.combine(stack, backend="cpu", **kw)
        t_cpu = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = gpuflat.combine(stack, backend="cuda", **kw)
        t_gpu = time.perf_counter() - t0
        say(
            f"{label}: {n} x 1531 x 1283, {want.plan.nbands} bands: cpu {t_cpu:.2f} s, "
            f"cuda {t_gpu:.2f} s"
        )
        check(want.plan.nbands >= 3, f"{label}: several bands")
        figures[label] = {
            "bands": want.plan.nbands,
            "cpu_s": t_cpu,
            "cuda_s": t_gpu,
            "identical": _compare_results(label, got, want),
        }
    record("pipeline", figures)


# -- 64-bit indexing --------------------------------------------------------------------------

_GEN = r"""
unsigned long long z = (unsigned long long)i * 0x9E3779B97F4A7C15ull + seed;
z ^= z >> 31; z *= 0xBF58476D1CE4E5B9ull; z ^= z >> 29;
float u = (float)(z >> 40) * (1.0f / 16777216.0f);
x = 1000.0f + 100.0f * u + ((z & 1023ull) == 0ull ? 50000.0f : 0.0f);
"""


def _combine_args(d_data, d_scale, n, npix, p0, nthreads, scratch, params, outs, rejected):
    from gpuflat.backends._params import pclip_offset

    p = params
    null = np.uint64(0)
    return (
        d_data, null, d_scale, null, np.int32(n), np.int64(npix), np.int64(p0),
        np.int64(nthreads), null if scratch is None else scratch, np.int32(p.clip_scaled),
        np.float64(p.min_value), np.float64(p.max_value), np.int32(p.nlow), np.int32(p.nhigh),
        np.int32(p.sigma), np.int32(p.center), np.int32(p.dev), np.float64(p.sigma_low),
        np.float64(p.sigma_high), np.int32(p.maxiters), np.int32(p.method),
        np.int32(p.ccdclip), np.int32(p.nkeep), np.int32(pclip_offset(p.pclip, n)), null, *outs,
        null if rejected is None else rejected, null, null,
    )  # fmt: skip


def step_index64():
    """Past 2**31 (and 2**32) elements: the combine kernels on a 4 x (2**30 + 7) band on the
    device (17 GB), sampled pixels against numba; the level kernels on a 65537 x 32768 frame
    (8.6 GB) against the exact median and mean of its known values."""
    import cupy as cp

    from gpuflat.backends import _numba
    from gpuflat.backends._cuda import BLOCK, LEVEL_COPIES, CupyDevice, median_from_state
    from gpuflat.backends._kernels import median_launches
    from gpuflat.backends._params import KernelParams

    dev = CupyDevice()
    free = cp.cuda.runtime.memGetInfo()[0]
    n, npix = 4, 2**30 + 7
    need = n * npix * 4 + npix * 20 + (1 << 30)
    figures = {"free_bytes": free}
    if free < need:
        check(False, f"64-bit indexing: needs {need / 1e9:.0f} GB free, has {free / 1e9:.0f}")
        record("index64", figures)
        return
    gen = cp.ElementwiseKernel("uint64 seed", "float32 x", _GEN, "gpuflat_check_gen")
    d_data = cp.empty((n, npix), cp.float32)
    gen(np.uint64(12345), d_data)
    rng = np.random.default_rng(0)
    scale = 1.0 / rng.uniform(900.0, 1100.0, n)
    d_scale = cp.asarray(scale)
    params = KernelParams()
    d_image, d_uncert = cp.empty(npix, cp.float64), cp.empty(npix, cp.float64)
    d_count = cp.empty(npix, cp.int32)
    d_rej = cp.zeros(n, cp.uint64)
    outs = (d_image, d_uncert, d_count)
    t0 = time.perf_counter()
    args = _combine_args(d_data, d_scale, n, npix, 0, npix, None, params, outs, d_rej)
    dev._function("combine.cu", "gpuflat_combine_16")(
        ((npix + BLOCK - 1) // BLOCK,), (BLOCK,), args
    )
    sync()
    t_kernel = time.perf_counter() - t0
    # sampled pixels: random ones, both ends, and the last launch of combine_n below
    tail = 1 << 20
    idx = np.unique(
        np.concatenate(
            [rng.integers(0, npix, 300_000), np.arange(2000), np.arange(npix - 2000, npix)]
        )
    )
    d_idx = cp.asarray(idx)
    sample = d_data[:, d_idx].get()
    want = _numba.combine_band(sample, None, scale, None, params)
    got = (d_image[d_idx].get(), d_uncert[d_idx].get(), d_count[d_idx].get())
    ok = all(bits_equal(g, w) for g, w in zip(got, want, strict=True))
    say(f"combine_16 over {n} x {npix} ({n * npix / 2**31:.2f} x 2**31 samples): {t_kernel:.3f} s")
    check(ok, f"combine_16 past 2**32 samples: {idx.size} sampled pixels == numba")
    check(int(d_rej.sum().get()) > 0, "rejected counters counted past 2**31")
    # the global-scratch kernel on the band's last 2**20 pixels (p0 > 2**30, offsets > 2**32)
    scratch = cp.empty(9 * n * tail, cp.uint8)
    p0 = npix - tail
    args = _combine_args(d_data, d_scale, n, npix, p0, tail, scratch, params, outs, None)
    d_image.fill(0)
    dev._function("combine.cu", "gpuflat_combine_n")(((tail + BLOCK - 1) // BLOCK,), (BLOCK,), args)
    last = np.arange(p0, npix)
    want = _numba.combine_band(d_data[:, p0:].get(), None, scale, None, params)
    got = (d_image[p0:].get(), d_uncert[p0:].get(), d_count[p0:].get())
    check(
        all(bits_equal(g, w) for g, w in zip(got, want, strict=True)),
        f"combine_n, p0 = {p0}: {last.size} pixels == numba",
    )
    figures |= {"combine_samples": n * npix, "combine_kernel_s": t_kernel}
    del d_data, d_image, d_uncert, d_count, scratch, d_idx
    cp.get_default_memory_pool().free_all_blocks()

    # frame level past 2**31 elements: x = e % 1000
    rows, cols, m = 65537, 32768, 1000
    total = rows * cols
    d_frame = cp.empty((rows, cols), cp.float32)
    cp.ElementwiseKernel("", "float32 x", "x = (float)(i % 1000);", "gpuflat_check_mod")(d_frame)
    counts = [total // m + (1 if v < total % m else 0) for v in range(m)]
    cum = np.cumsum(counts)
    vlo = int(np.searchsorted(cum, (total - 1) // 2, side="right"))
    vhi = int(np.searchsorted(cum, total // 2, side="right"))
    want_median = (float(vlo) + float(vhi)) * 0.5
    want_mean = float(sum(v * c for v, c in enumerate(counts))) / total
    # everything on the legacy default stream, where the frame and the zeroed state were
    # written (a non-blocking stream would not wait for them)
    stream = cp.cuda.Stream.null
    d_state = cp.zeros(8, cp.uint32)
    d_hist = cp.zeros(2 * LEVEL_COPIES * 256, cp.uint32)
    sync()
    t0 = time.perf_counter()
    d_tot = cp.empty(512, cp.uint32)
    for launch in median_launches(d_frame, None, int(total), d_state, d_hist, d_tot):
        dev.launch(*launch, stream)
    stream.synchronize()
    t_median = time.perf_counter() - t0
    got_median = median_from_state(d_state.get())
    d_sums, d_counts = cp.empty(rows, cp.float64), cp.empty(rows, cp.int64)
    args = (d_frame, np.uint64(0), np.int64(rows), np.int64(cols), d_sums, d_counts)
    dev.launch("level.cu", "gpuflat_level_rowsum", (rows + BLOCK - 1) // BLOCK, BLOCK, args, stream)
    stream.synchronize()
    k = int(d_counts.get().sum())
    got_mean = float(np.cumsum(d_sums.get())[-1]) / k
    say(
        f"level of a {rows} x {cols} frame ({total / 2**31:.4f} x 2**31): median "
        f"{got_median} (want {want_median}) in {t_median:.3f} s, mean {got_mean!r} "
        f"(want {want_mean!r})"
    )
    check(k == total, "level: every element counted")
    check(got_median == want_median, "level median past 2**31 elements")
    check(got_mean == want_mean, "level mean past 2**31 elements")
    figures |= {"level_elements": total, "level_median_s": t_median}
    record("index64", figures)


# -- subnormals -------------------------------------------------------------------------------


def step_subnormal():
    import cuda_harness as harness

    from gpuflat.backends import _numba
    from gpuflat.backends._cuda import CudaBackend
    from gpuflat.backends._params import KernelParams

    backend = CudaBackend()
    tiny = np.float32(1.4e-45)
    data = np.full((5, 1000), tiny, np.float32)
    image, _, _ = backend.combine_band(data, None, np.ones(5), None, KernelParams())
    say(f"average of five {tiny!r}: {image[0]!r} (a flushing build gives 0.0)")
    check(image[0] == float(tiny), "a subnormal sample survives the conversion to float64")
    level = backend.frame_level(data, None, "mean")
    check(level == float(tiny), f"frame mean of subnormals: {level!r}")
    raw = np.arange(1, 1001, dtype=">i2")
    conv = backend.convert(raw, 16, 1e-42, 0.0)
    want = (np.arange(1, 1001, dtype=np.float32) * np.float32(1e-42)).astype(np.float32)
    check(bits_equal(conv, want), "convert: int16 x BSCALE 1e-42 keeps subnormal results")
    rng = np.random.default_rng(3)
    ok = True
    for kind in ("one", "mixed", "tiny"):
        band = harness.special_band(rng, 11, 100_000)
        scale = harness.special_scales(rng, 11, kind)
        for params in (KernelParams(), KernelParams(method=1), KernelParams(method=2, sigma=0)):
            rg, rw = np.zeros(11, np.int64), np.zeros(11, np.int64)
            got = backend.combine_band(band, None, scale, None, params, rejected=rg)
            want = _numba.combine_band(band, None, scale, None, params, rejected=rw)
            ok &= all(bits_equal(g, w) for g, w in zip(got, want, strict=True))
            ok &= bits_equal(rg, rw)
    check(ok, "special bands (subnormals, signed zeros, NaN payloads) == numba")
    record("subnormal", {"kept": bool(image[0] == float(tiny)), "special_bands_identical": ok})


# -- throughput -------------------------------------------------------------------------------


def step_throughput():
    import cupy as cp
    import cupyx

    import gpuflat
    from gpuflat.backends import _numba
    from gpuflat.backends._cuda import BLOCK, CudaBackend, CupyDevice, combine_kernel
    from gpuflat.backends._params import KernelParams

    figures = {}
    info_peak = None
    try:
        from gpuflat.backends._cuda import device_info

        info_peak = device_info()["peak_bandwidth_gb_s"]
    except Exception:
        pass
    # the kernel alone, 15 x 4096^2 on the device, with and without the rejected counters
    n, npix = 15, 4096 * 4096
    dev = CupyDevice()
    d_data = cp.empty((n, npix), cp.float32)
    cp.ElementwiseKernel("uint64 seed", "float32 x", _GEN, "gpuflat_check_gen")(
        np.uint64(7), d_data
    )
    d_scale = cp.asarray(1.0 / np.linspace(950.0, 1050.0, n))
    outs = (cp.empty(npix, cp.float64), cp.empty(npix, cp.float64), cp.empty(npix, cp.int32))
    fn = dev._function("combine.cu", combine_kernel(n))
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    min_bytes = n * npix * 4 + npix * 20
    for label, params in (("guide", KernelParams()), ("median", KernelParams(method=1))):
        for rej in (False, True):
            d_rej = cp.zeros(n, cp.uint64) if rej else None
            args = _combine_args(d_data, d_scale, n, npix, 0, npix, None, params, outs, d_rej)
            grid = ((npix + BLOCK - 1) // BLOCK,)
            fn(grid, (BLOCK,), args)
            best = float("inf")
            for _ in range(5):
                start.record()
                fn(grid, (BLOCK,), args)
                stop.record()
                stop.synchronize()
                best = min(best, cp.cuda.get_elapsed_time(start, stop) / 1e3)
            key = f"kernel {label}{' +rejected' if rej else ''}"
            gbs = min_bytes / best / 1e9
            figures[key] = {"s": best, "Gsamples_s": n * npix / best / 1e9, "GB_s": gbs}
            pct = f", {100 * gbs / info_peak:.0f}% of peak" if info_peak else ""
            say(
                f"{key}: {best * 1e3:.2f} ms, {n * npix / best / 1e9:.1f} G samples/s, "
                f"{gbs:.0f} GB/s{pct}"
            )
    del d_data
    cp.get_default_memory_pool().free_all_blocks()
    # host -> device, 1 GiB, pageable and pinned
    size = 1 << 30
    pageable = np.ones(size, np.uint8)
    pinned = cupyx.empty_pinned(size, np.uint8)
    pinned[...] = 1
    d = cp.empty(size, cp.uint8)
    for label, h in (("pageable", pageable), ("pinned", pinned)):
        d.set(h)
        sync()
        t = best_of(lambda h=h: (d.set(h), sync()))
        figures[f"H2D {label}"] = {"GB_s": size / t / 1e9}
        say(f"H2D {label}: {size / t / 1e9:.1f} GB/s")
    del d, pinned, pageable
    cp.get_default_memory_pool().free_all_blocks()
    # frame level of an 8192^2 frame: backend (upload included) and numba
    rng = np.random.default_rng(1)
    frame = rng.normal(1000.0, 30.0, (8192, 8192)).astype(np.float32)
    backend = CudaBackend()
    for how in ("median", "mean"):
        backend.frame_level(frame, None, how)
        t_gpu = best_of(lambda how=how: backend.frame_level(frame, None, how))
        _numba.frame_level(frame, None, how)
        t_cpu = best_of(lambda how=how: _numba.frame_level(frame, None, how), 2)
        same = backend.frame_level(frame, None, how) == _numba.frame_level(frame, None, how)
        figures[f"level 8192^2 {how}"] = {"cuda_s": t_gpu, "cpu_s": t_cpu, "identical": same}
        say(
            f"frame {how} 8192^2: cuda {t_gpu * 1e3:.1f} ms (upload included), numba "
            f"{t_cpu * 1e3:.1f} ms"
        )
        check(same, f"level 8192^2 {how}: cuda == numba")
    # W1 and W2 end to end from FITS files (gpuflat simulate), cuda and cpu
    from gpuflat._select import is_selected, read_info
    from gpuflat._simulate import simulate_night

    work = Path(os.environ.get("DEVICE_CHECK_WORK", tempfile.mkdtemp(prefix="gpuflat-dc-")))
    for name, (n, rows, cols, dtype) in {
        "W1": (15, 2048, 2048, "float32"),
        "W2": (20, 4096, 4096, "uint16"),
    }.items():
        d = work / name
        t0 = time.perf_counter()
        simulate_night(d, shape=(rows, cols), n_dome=0, n_twilight=n, dtype=dtype, seed=1)
        paths = [str(p) for p in sorted(d.glob("*.fits")) if is_selected(read_info(p))]
        t_sim = time.perf_counter() - t0
        times, results = {}, {}
        for backend_name in ("cuda", "cpu", "cuda"):
            t0 = time.perf_counter()
            results[backend_name] = gpuflat.combine(paths, backend=backend_name, mem_limit=350e6)
            times[backend_name] = time.perf_counter() - t0  # cuda: the second (warm) run
        same = _compare_results(name, results["cuda"], results["cpu"])
        figures[name] = {
            "frames": len(paths),
            "cuda_s": times["cuda"],
            "cpu_s": times["cpu"],
            "simulate_s": t_sim,
            "identical": same,
            "cuda_timings": results["cuda"].timings,
        }
        say(
            f"{name} ({len(paths)} x {rows} x {cols} {dtype}, files): cuda {times['cuda']:.2f} s, "
            f"cpu {times['cpu']:.2f} s; cuda stages {results['cuda'].timings}"
        )
        shutil.rmtree(d, ignore_errors=True)
    record("throughput", figures)


# -- the GPU tests ------------------------------------------------------------------------------


def step_gpu_tests(which="gpu-tests"):
    """tests/test_cuda_gpu.py; skips count as failures. Warnings are shown, not errors
    (pyproject's filterwarnings = error would turn a stray warning of the GPU image's
    packages into a failed run). "gpu-tests": the kernel tests; "gpu-pipeline": the end to
    end ones, which compare with numba's float32-product code (a cache of its own)."""
    import xml.etree.ElementTree as ET

    xml = OUT / f"{which.replace('-', '_')}.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-rs",
        "-W",
        "default",
        "-m",
        "gpu",
        f"--junitxml={xml}",
        "-k",
        "pipeline or host_path" if which == "gpu-pipeline" else "not (pipeline or host_path)",
        "tests/test_cuda_gpu.py",
    ]
    rc = subprocess.run(cmd, cwd=ROOT, check=False).returncode
    t = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    if xml.exists():
        root = ET.parse(xml).getroot()
        for suite in [root] if root.tag == "testsuite" else list(root):
            for k in t:
                t[k] += int(suite.get(k, 0))
    say(
        f"gpu tests: {t['tests']} run, {t['failures']} failed, {t['errors']} errors, "
        f"{t['skipped']} skipped (a skip counts as a failure here); pytest exit {rc}"
    )
    record(which, t | {"pytest_exit": rc})
    check(rc == 0 and t["tests"] > 0 and not (t["failures"] or t["errors"]), "GPU tests pass")
    check(t["skipped"] == 0, "no GPU test skipped")


def step_sanitizer():
    """compute-sanitizer memcheck over small launches of every kernel (when installed)."""
    found = shutil.which("compute-sanitizer") or next(
        (str(p) for p in sorted(Path("/usr/local").glob("cuda*/bin/compute-sanitizer"))), None
    )
    if found is None:
        say("compute-sanitizer not found: not run")
        record("sanitizer", {"run": False})
        return
    cmd = [
        found,
        "--tool",
        "memcheck",
        "--error-exitcode",
        "9",
        "--print-limit",
        "20",
        sys.executable,
        str(ROOT / "bench" / "device_check.py"),
        "sanitize-case",
    ]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    say(res.stdout[-6000:] + res.stderr[-6000:])
    record("sanitizer", {"run": True, "exit": res.returncode})
    check(
        res.returncode == 0 and "sanitize-case: all launches done" in res.stdout,
        f"compute-sanitizer memcheck clean (exit {res.returncode})",
    )


# -- warm: the numba backend's compiled code, ahead of the steps that compare with it ------------


def step_warm(pad=0, group="kernels"):
    """Compile (into NUMBA_CACHE_DIR) the numba specialisations that a group of later
    steps compares with, on tiny data: "kernels" (``combine_band`` and ``frame_level`` as
    the GPU tests, index64 and subnormal call them, float64 results) or "pipeline"
    (``gpuflat.combine`` from arrays and files, float32 products). The shell script runs
    both groups in the background from the start, each into its own cache folder, and
    waits for a group before its first step: one cold compile of the combine kernel takes
    about 2 minutes and each group needs two, which inside a step would eat its limit.

    ``pad``: compile that many Python frames deeper. numba's inlining deep-copies its IR
    recursively, and on CPython 3.11 a recursion that keeps crossing the boundary of the
    interpreter's frame-stack chunks maps and unmaps a chunk each time: measured here, the
    same cold compile took 2 min at one depth and over 10 at another. The script races a
    few depths per group, each into its own cache folder, and keeps the first to finish
    (on the first H200's host, Python 3.12 and 16 cores, the depth of 74 won both groups,
    after 255 and 266 s)."""
    if pad > 0:
        return step_warm(pad - 1, group)
    t0 = time.perf_counter()
    {"kernels": _warm_kernels, "pipeline": _warm_pipeline}[group](t0)
    if os.environ.get("NUMBA_CACHE_DIR"):  # the shell script keeps the first one done
        Path(os.environ["NUMBA_CACHE_DIR"], "warm-done").touch()
    say(f"warm {group}: numba's code compiled and cached in {time.perf_counter() - t0:.0f} s")


def _warm_kernels(t0):
    from gpuflat.backends import _numba
    from gpuflat.backends._params import KernelParams

    rng = np.random.default_rng(0)
    for path, params in (("fast", KernelParams()), ("general", KernelParams(nlow=1))):
        for n in (5, 20, 70):
            data = rng.normal(1000.0, 30.0, (n, 300)).astype(np.float32)
            mask = (rng.random(data.shape) < 0.1).astype(np.uint8)
            _numba.combine_band(data, mask, np.ones(n), np.ones(n), params, rejected=None)
            _numba.combine_band(data, None, np.ones(n), None, params, rejected=np.zeros(n, int))
        say(f"warm kernels: combine_band, {path} path, at {time.perf_counter() - t0:.0f} s")
    frame = rng.normal(1000.0, 30.0, (40, 50)).astype(np.float32)
    for how in ("median", "mean"):
        for m in (None, (rng.random(frame.shape) < 0.3).astype(np.uint8)):
            _numba.frame_level(frame, m, how)


def _warm_pipeline(t0):
    import gpuflat
    from gpuflat._simulate import simulate_night

    for label, opts in PIPELINE.items():
        opts = dict(opts)
        n = opts.pop("frames", 24)
        gpuflat.combine(_stack(n, (40, 30), seed=n), backend="cpu", mem_limit=60e6, **opts)
        say(f"warm pipeline: {label} at {time.perf_counter() - t0:.0f} s")
    work = Path(tempfile.mkdtemp(prefix="warm-", dir=os.environ.get("DEVICE_CHECK_WORK")))
    for dtype in ("float32", "uint16"):
        d = work / dtype
        simulate_night(d, shape=(64, 96), n_dome=0, n_twilight=5, dtype=dtype, seed=1)
        gpuflat.combine(sorted(str(p) for p in d.glob("*.fits")), backend="cpu")
        say(f"warm pipeline: {dtype} files at {time.perf_counter() - t0:.0f} s")
    shutil.rmtree(work, ignore_errors=True)


# -- a small launch of every kernel (for compute-sanitizer) ---------------------------------


def step_sanitize_case():
    from gpuflat.backends._cuda import CudaBackend
    from gpuflat.backends._params import KernelParams

    backend = CudaBackend(chunk_pixels=256)
    rng = np.random.default_rng(0)
    for n in (3, 17, 40, 70):
        data = rng.normal(1000.0, 30.0, (n, 1000)).astype(np.float32)
        mask = (rng.random(data.shape) < 0.1).astype(np.uint8)
        for params in (KernelParams(), KernelParams(method=1, clip_scaled=0, nlow=1, nhigh=1)):
            rej = np.zeros(n, np.int64)
            backend.combine_band(data, mask, np.ones(n), np.ones(n), params, rejected=rej)
            backend.combine_band(data, None, np.ones(n), None, params)
    frame = rng.normal(1000.0, 30.0, (77, 131)).astype(np.float32)
    for how in ("median", "mean"):
        backend.frame_level(frame, None, how)
        backend.frame_level(frame, (rng.random(frame.shape) < 0.3).astype(np.uint8), how)
    for bitpix, dt in ((16, ">i2"), (32, ">i4"), (-32, ">f4"), (-64, ">f8")):
        backend.convert(np.arange(1001).astype(dt), bitpix, 2.0, 1.0)
    say("sanitize-case: all launches done")


STEPS = {
    "env": step_env,
    "compile": step_compile,
    "pipeline": step_pipeline,
    "index64": step_index64,
    "subnormal": step_subnormal,
    "throughput": step_throughput,
    "gpu-tests": step_gpu_tests,
    "gpu-pipeline": lambda: step_gpu_tests("gpu-pipeline"),
    "sanitizer": step_sanitizer,
    "sanitize-case": step_sanitize_case,
    "warm": step_warm,
    "fast": lambda: _fast_steps().step_fast(),
    "level": lambda: _fast_steps().step_level(),
    "cli": lambda: _fast_steps().step_cli(),
}


def _fast_steps():
    """bench/device_check_fast.py: the steps of issue 25 (fast kernels, levels, the CLI)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import device_check_fast

    device_check_fast.H = sys.modules[__name__]  # say, check, record: this run's
    return device_check_fast


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=STEPS)
    ap.add_argument("--pad", type=int, default=0, help="warm: compile this many frames deeper")
    ap.add_argument("--group", choices=("kernels", "pipeline"), default="kernels",
                    help="warm: which steps' numba code")  # fmt: skip
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    STEPS[args.step](**({"pad": args.pad, "group": args.group} if args.step == "warm" else {}))
    if FAILED:
        say(f"{args.step}: {len(FAILED)} check(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
