"""The CUDA kernels, checked without a GPU.

- compile gate: nvcc builds every kernel for sm_80 and sm_90, warnings as errors, no FMA,
  and no kernel spills registers;
- CuPy's compile: NVRTC 12 and 13 (loaded with ctypes) build every kernel with the option
  list CuPy's RawModule really uses, ``-ftz=true`` included, and the PTX and the sm_80 /
  sm_90 machine code (``cuobjdump -sass``) hold no flush-to-zero instruction;
- CPU execution: the same .cu sources, built with g++ through kernels/cuda_shim.h, give
  bit for bit the numba backend's results (and a plain-Python transcription of
  docs/kernel-contract.md, kept here as a third opinion), on fixed cases and under
  hypothesis;
- the same build under AddressSanitizer + UBSan, in a subprocess.
"""

from __future__ import annotations

import importlib.util
import io
import math
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cuda_harness as harness
import numpy as np
import nvrtc_harness
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuflat.backends._params import KernelParams, pclip_offset

ROOT = Path(__file__).resolve().parents[1]
KERNEL_FILES = ("combine.cu", "level.cu", "convert.cu")
MAD_TO_STD = 1.482602218505602

needs_cxx = pytest.mark.skipif(harness.compiler() is None, reason="no host C++ compiler (g++)")
pytestmark = needs_cxx

if importlib.util.find_spec("gpuflat.backends._numba") is not None:
    from gpuflat.backends import _numba as numba_backend
else:  # pragma: no cover - while the numba backend is being written
    numba_backend = None


# -- a plain-Python transcription of docs/kernel-contract.md ------------------------------


def _median(s, a, b):
    k = b - a
    return (s[a + (k - 1) // 2] + s[a + k // 2]) * 0.5


def _mad(s, a, b, med):
    dev = sorted(abs(s[q] - med) for q in range(a, b))
    return _median(dev, 0, len(dev))


def _contract_pclip(s, w0, w1, off, sigma_low, sigma_high):
    """Step 5d: the surviving sorted positions [af, bf) of the window."""
    k = w1 - w0
    if k < 3:
        return w0, w1
    med = _median(s, w0, w1)
    if off < 0:
        d = med - s[w0 + max(0, (k - 1) // 2 + off)]
    else:
        d = s[w0 + min(k - 1, k // 2 + off)] - med
    if d == 0:
        return w0, w1
    kept = [
        r
        for r in range(w0, w1)
        if not (sigma_low != math.inf and (med - s[r]) / d >= sigma_low)
        and not (sigma_high != math.inf and (s[r] - med) / d >= sigma_high)
    ]
    return (kept[0], kept[-1] + 1) if kept else (w0, w0)


def contract_pixel(x, msk, scale, weight, prm: KernelParams):
    """One pixel, literally as the contract says (Python floats are IEEE doubles)."""
    n = len(x)
    valid = [
        (msk is None or msk[i] == 0)
        and math.isfinite(float(x[i]))
        and prm.min_value <= float(x[i]) <= prm.max_value
        for i in range(n)
    ]
    y = [float(x[i]) * float(scale[i]) for i in range(n)]
    v = [y[i] if prm.clip_scaled else float(x[i]) for i in range(n)]
    frames = [i for i in range(n) if valid[i]]
    m = len(frames)
    s = sorted(v[i] for i in frames)  # stable, as the kernels' insertion sort
    w0, w1 = prm.nlow, max(prm.nlow, m - prm.nhigh)
    inwin = {}
    for i in frames:
        rank = sum(1 for j in frames if v[j] < v[i] or (v[j] == v[i] and j < i))
        inwin[i] = w0 <= rank < w1
    window = [i for i in frames if inwin[i]]

    def members(a, b):
        return [i for i in window if s[a] <= v[i] <= s[b - 1]]

    af, bf = w0, w1
    off = pclip_offset(prm.pclip, n)
    if prm.sigma and w1 > w0 and off and not prm.ccdclip:
        af, bf = _contract_pclip(s, w0, w1, off, prm.sigma_low, prm.sigma_high)
    elif prm.sigma and w1 > w0:
        a, b, lo, hi, it = w0, w1, -math.inf, math.inf, 0
        while b > a and (prm.maxiters < 0 or it < prm.maxiters):
            it += 1
            k = b - a
            med = _median(s, a, b)
            total = 0.0
            for i in members(a, b):
                total += v[i]
            mean = total / k
            ss = 0.0
            for i in members(a, b):
                ss += (v[i] - mean) * (v[i] - mean)
            c = med if prm.center == 0 else mean
            d = MAD_TO_STD * _mad(s, a, b, med) if prm.dev == 0 else math.sqrt(ss / k)
            lo = -math.inf if prm.sigma_low == math.inf else c - prm.sigma_low * d
            hi = math.inf if prm.sigma_high == math.inf else c + prm.sigma_high * d
            kept = [q for q in range(a, b) if not (s[q] < lo or s[q] > hi)]
            if len(kept) == b - a:
                break
            a, b = (kept[0], kept[-1] + 1) if kept else (a, a)
        kept = [q for q in range(w0, w1) if not (s[q] < lo or s[q] > hi)]
        af, bf = (kept[0], kept[-1] + 1) if kept else (w0, w0)
    k = bf - af
    if k == 0:
        return math.nan, math.nan, 0
    surv = members(af, bf)
    assert len(surv) == k
    if prm.method == 1:
        ys = sorted(y[i] for i in surv)
        med = _median(ys, 0, k)
        return med, MAD_TO_STD * _mad(ys, 0, k, med) / math.sqrt(k), k
    sy = swy = sw = 0.0
    for i in surv:
        sy += y[i]
        if weight is not None:
            swy += float(weight[i]) * y[i]
            sw += float(weight[i])
    my = sy / k
    ssy = 0.0
    for i in surv:
        ssy += (y[i] - my) * (y[i] - my)
    sd = math.sqrt(ssy / k)
    if prm.method == 0:
        return (swy / sw if weight is not None else my), sd / math.sqrt(k), k
    return (swy if weight is not None else sy), sd * math.sqrt(k), k


def contract_combine(data, mask, scale, weight, params):
    npix = data.shape[1]
    image, uncert = np.empty(npix), np.empty(npix)
    count = np.empty(npix, np.int32)
    for p in range(npix):
        msk = None if mask is None else mask[:, p]
        image[p], uncert[p], count[p] = contract_pixel(data[:, p], msk, scale, weight, params)
    return image, uncert, count


# -- comparisons ---------------------------------------------------------------------------


def assert_identical(got, want, what=""):
    """Equal bit for bit (NaN only where NaN), dtype and shape included."""
    for name, g, w in zip(("image", "uncert", "count"), got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, (what, name)
        if g.dtype.kind == "f":
            nan_g, nan_w = np.isnan(g), np.isnan(w)
            np.testing.assert_array_equal(nan_g, nan_w, err_msg=f"{what} {name}: NaN positions")
            bits = g.view(f"u{g.itemsize}")[~nan_g], w.view(f"u{w.itemsize}")[~nan_w]
            bad = np.flatnonzero(bits[0] != bits[1])
            assert bad.size == 0, (
                f"{what} {name}: {bad.size} differ, e.g. "
                f"{g[~nan_g][bad[:3]]} vs {w[~nan_w][bad[:3]]}"
            )
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"{what} {name}")


def check_combine(data, mask, scale, weight, params, *, kernels=None, reference=True):
    """The shim kernels against numba (bit for bit) and the transcription of the contract."""
    want = (
        numba_backend.combine_band(data, mask, scale, weight, params)
        if numba_backend is not None
        else contract_combine(data, mask, scale, weight, params)
    )
    n = data.shape[0]
    want_rejected = None
    if numba_backend is not None:
        want_rejected = np.zeros(n, np.int64)
        numba_backend.combine_band(data, mask, scale, weight, params, rejected=want_rejected)
    if kernels is None:
        kernels = (None, "gpuflat_combine_n", *(("fast",) if fast_applies(n, params) else ()))
    for kernel in kernels:
        rejected = np.zeros(n, np.uint64)
        got = harness.combine_band(
            data, mask, scale, weight, params, kernel=kernel, pieces=2, rejected=rejected
        )
        assert_identical(got, want, f"{kernel or harness_default(n)} {params}")
        if want_rejected is not None:
            np.testing.assert_array_equal(rejected.astype(np.int64), want_rejected)
    if reference and numba_backend is not None:
        assert_identical(contract_combine(data, mask, scale, weight, params), want, "contract")
    return want


def fast_applies(n, params):
    from gpuflat.backends._cuda_fast import fast_kernel

    return fast_kernel(n, params) is not None


def harness_default(n):
    from gpuflat.backends._kernels import combine_kernel

    return combine_kernel(n)


# -- compile gate --------------------------------------------------------------------------

NVCC = shutil.which("nvcc")
_PTXAS = re.compile(
    r"Compiling entry function '(\w+)' for '(sm_\d+)'.*?"
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads.*?"
    r"Used (\d+) registers",
    re.S,
)


def nvcc_resources(source: str, tmp_path: Path) -> dict:
    """Compile one kernel file with nvcc; {(kernel, arch): (regs, stack, spill st, spill ld)}."""
    cmd = [
        NVCC,
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=sm_90",
        "--fmad=false",
        "-std=c++17",
        "-ftz=true",  # as CuPy compiles (gpuflat.backends._kernels.cupy_nvrtc_options)
        "-Werror",
        "all-warnings",
        "-Xptxas",
        "-v,-warn-spills",
        "-c",
        str(ROOT / "kernels" / source),
        "-o",
        str(tmp_path / (source + ".o")),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr}"
    found = {
        (m[1], m[2]): (int(m[6]), int(m[3]), int(m[4]), int(m[5]))
        for m in _PTXAS.finditer(res.stdout + res.stderr)
    }
    return found


@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH")
@pytest.mark.parametrize("source", KERNEL_FILES)
def test_nvcc_compiles_without_spills(source, tmp_path):
    found = nvcc_resources(source, tmp_path)
    kernels = set(
        re.findall(r'extern "C" __global__ void (\w+)\(', (ROOT / "kernels" / source).read_text())
    )
    assert kernels and {(k, a) for k in kernels for a in ("sm_80", "sm_90")} == set(found)
    for (kernel, arch), (regs, stack, spill_st, spill_ld) in found.items():
        assert spill_st == 0 and spill_ld == 0, f"{kernel} {arch} spills: {regs=} {stack=}"
        # ccdclip/nkeep's kernels (gpuflat_combine_x*, and _s*, with statuses for the grow)
        # may take a few more: they are only launched for those options, the guide's path
        # stays within 64
        limit = 72 if kernel.startswith(("gpuflat_combine_x", "gpuflat_combine_s")) else 64
        assert regs <= limit, f"{kernel} {arch} uses {regs} registers"
        cap = kernel.rsplit("_", 1)[1].lstrip("xs")
        if kernel.startswith("gpuflat_combine_") and cap.isdigit():
            # the sort buffer lives in local memory and nothing else does (its three flag
            # words, valid, in the window, survivor, are in registers)
            assert stack <= 8 * int(cap), (kernel, arch, stack)
        elif source != "combine.cu":
            assert stack == 0, (kernel, arch, stack)


def test_sources_are_standalone():
    """No includes (NVRTC has no standard headers) and no fast-math anywhere (the word
    "fast" only in the fast kernels' names, fast.cu's, and "fast kernels"/"fast path")."""
    for source in (*KERNEL_FILES, "fast.cu"):
        text = (ROOT / "kernels" / source).read_text()
        text = re.sub(
            r"[\w.]*_(fast|FAST)[\w.]*|[\w.]*(fast|FAST)_[\w.]*|\bfast\.cu\b"
            r"|\bfast (combine )?(kernels?|path|launch)\b",
            "",
            text,
        )
        assert "#include" not in text, source
        assert "fast" not in text.lower().replace("fast-math", "").replace("fast_math", ""), source
        assert text.count("#ifdef GPUFLAT_HOST_SHIM") == 1, source
    from gpuflat.backends._kernels import COMPILE_OPTIONS, _kernel_source

    assert "--fmad=false" in COMPILE_OPTIONS
    assert _kernel_source("combine.cu") == (ROOT / "kernels" / "combine.cu").read_text()


# -- CuPy's compile: NVRTC with CuPy's options, machine code without flush-to-zero ----------

ARCHS = ("sm_80", "sm_90")
NVRTC_MAJORS = (12, 13)
_FTZ_PTX = re.compile(r"\.ftz\b")
_FTZ_SASS = re.compile(r"\.FTZ\b")


def _nvrtc(major):
    libs = nvrtc_harness.nvrtc_libraries()
    if major not in libs:
        found = ", ".join(f"{v.version} at {v.path}" for v in libs.values()) or "none"
        pytest.skip(
            f"NVRTC {major} not found (found: {found}); pip install "
            + ("nvidia-cuda-nvrtc-cu12" if major == 12 else "nvidia-cuda-nvrtc")
        )
    return libs[major]


#: the kernels of a file the NVRTC checks compile (each entry point is guarded, as the
#: loader compiles one): combine.cu's every code path, the x kernels being the s kernels
#: without the statuses and 32/64 the 16 with a larger sort buffer
NVRTC_KERNELS = {
    "combine.cu": ("gpuflat_combine_16", "gpuflat_combine_n", "gpuflat_combine_s16",
                   "gpuflat_combine_sn"),
}  # fmt: skip


def _cupy_build(major, source, arch, ftz="-ftz=true"):
    from gpuflat.backends._kernels import cupy_nvrtc_options

    _nvrtc(major)
    options = tuple(o if o != "-ftz=true" else ftz for o in cupy_nvrtc_options(arch))
    assert options.count(ftz) == 1
    only = NVRTC_KERNELS.get(source, ())
    if only:
        options += ("-DGPUFLAT_ONLY", *(f"-DGPUFLAT_ONLY_{k}" for k in only))
    return nvrtc_harness.compile_kernel_file(major, source, options)


def _sass(cubin):
    why = nvrtc_harness.sass_tools_missing()
    if why:
        pytest.skip(why)
    return nvrtc_harness.sass(cubin)


def _listing(lines, pattern, limit=8):
    hits = [ln for ln in lines if pattern.search(ln)]
    return len(hits), "\n".join(hits[:limit])


@pytest.mark.parametrize("major", NVRTC_MAJORS)
@pytest.mark.parametrize("source", KERNEL_FILES)
def test_cupy_compile_has_no_ftz(major, source):
    """As CuPy builds them (-ftz=true last): no PTX instruction flushes subnormals, no
    .FTZ instruction in the machine code on sm_80 or sm_90, and on sm_90 exactly the
    instructions of a -ftz=false build (the flag changes nothing)."""
    for arch in ARCHS:
        ptx, cubin = _cupy_build(major, source, arch)
        n, some = _listing(nvrtc_harness.ptx_instructions(ptx), _FTZ_PTX)
        assert n == 0, f"NVRTC {major} {source} {arch}: {n} PTX instructions with .ftz:\n{some}"
        code = nvrtc_harness.instructions(_sass(cubin))
        assert len(code) > 20, f"no SASS read back for {source} {arch}"
        n, some = _listing(code, _FTZ_SASS)
        assert n == 0, f"NVRTC {major} {source} {arch}: {n} SASS instructions with .FTZ:\n{some}"
    _, plain = _cupy_build(major, source, "sm_90", ftz="-ftz=false")
    assert nvrtc_harness.instructions(_sass(plain)) == code, f"-ftz=true changes {source}"


_FTZ_CONTROL = """
extern "C" __global__ void widen(const float *x, double *y, float *z) {
  y[threadIdx.x] = (double)x[threadIdx.x];
  z[threadIdx.x] = x[threadIdx.x] * 3.0f;
}
"""


def test_cupy_compile_ftz_detector_sees_flushes():
    """Negative control: plain (double)x and float arithmetic under CuPy's options do flush,
    and both checks above see it (so their passing is not vacuous)."""
    from gpuflat.backends._kernels import cupy_nvrtc_options

    libs = nvrtc_harness.nvrtc_libraries()
    if not libs:
        pytest.skip("NVRTC not found; pip install nvidia-cuda-nvrtc-cu12 or nvidia-cuda-nvrtc")
    nv = libs[max(libs)]
    ptx, cubin = nv.compile(_FTZ_CONTROL, cupy_nvrtc_options("sm_90"), "control.cu")
    assert _listing(nvrtc_harness.ptx_instructions(ptx), _FTZ_PTX)[0] >= 2, ptx
    assert _listing(nvrtc_harness.instructions(_sass(cubin)), _FTZ_SASS)[0] >= 2


# -- CPU execution: combine ------------------------------------------------------------------

PARAMS = {
    "guide": KernelParams(),
    "median": KernelParams(method=1),
    "sum": KernelParams(method=2),
    "ccdproc": KernelParams(clip_scaled=0, center=1, dev=1, sigma_low=3.0, sigma_high=3.0),
    "raw-median": KernelParams(clip_scaled=0, method=1, sigma_low=2.0, sigma_high=2.0),
    "iterate": KernelParams(maxiters=-1, sigma_low=2.0, sigma_high=2.0),
    "iterate-mean-std": KernelParams(center=1, dev=1, maxiters=-1, sigma_low=1.5, sigma_high=1.5),
    "mean-mad": KernelParams(center=1, dev=0, maxiters=3, sigma_low=2.5, sigma_high=2.5),
    "median-std": KernelParams(center=0, dev=1, maxiters=2, sigma_low=1.0, sigma_high=2.0),
    "one-sided": KernelParams(sigma_low=float("inf"), sigma_high=1.0, maxiters=-1),
    "minmax": KernelParams(min_value=900.0, max_value=1100.0),
    "nlow-nhigh": KernelParams(nlow=1, nhigh=2, sigma=0),
    "nlow-nhigh-clip": KernelParams(nlow=2, nhigh=1, maxiters=-1, sigma_low=2.0, method=1),
    "no-clip": KernelParams(sigma=0),
    "maxiters-0": KernelParams(maxiters=0, method=2),
}


def flat_band(rng, n, npix, *, nan=0.05, outliers=0.03, ties=False):
    data = rng.normal(1000.0, 20.0, (n, npix)) * rng.uniform(0.5, 2.0, (n, 1))
    if ties:
        data = np.round(data / 50.0) * 50.0
    data[rng.random(data.shape) < outliers] *= 50.0
    data[rng.random(data.shape) < outliers] = -1e30
    data = data.astype(np.float32)
    data[rng.random(data.shape) < nan] = np.nan
    data[rng.random(data.shape) < nan / 3] = np.inf
    return data


@pytest.mark.parametrize("name", PARAMS)
@pytest.mark.parametrize("n", [1, 2, 3, 15, 16, 17, 33, 64, 65, 100])
def test_combine_matches_numba(name, n):
    rng = np.random.default_rng(n * 1000 + len(name))
    npix = 40 if n <= 64 else 15
    data = flat_band(rng, n, npix, ties=n % 2 == 1)
    mask = (rng.random(data.shape) < 0.05).astype(np.uint8) if n % 3 else None
    scale = 1.0 / rng.uniform(500.0, 2000.0, n)
    weight = rng.uniform(0.5, 2.0, n) if n % 4 in (1, 2) else None
    check_combine(data, mask, scale, weight, PARAMS[name], reference=n <= 65)


def test_combine_large_stack():
    """More frames than any local buffer: the global-scratch kernel."""
    rng = np.random.default_rng(7)
    n = 300
    data = flat_band(rng, n, 6, ties=True)
    scale = 1.0 / rng.uniform(500.0, 2000.0, n)
    for params in (KernelParams(maxiters=-1), KernelParams(clip_scaled=0, method=1, nlow=5)):
        check_combine(data, None, scale, None, params, kernels=(None,), reference=False)


def test_combine_degenerate_pixels():
    """All values equal (MAD = 0), all masked, all NaN, one value, a single outlier."""
    n = 9
    data = np.full((n, 8), 1000.0, np.float32)
    data[:, 1] = np.nan
    data[4, 2] = 5000.0  # MAD 0: the outlier goes, the rest stays
    data[:, 3] = np.float32(-0.0)
    data[::2, 3] = 0.0
    data[:, 4] = np.arange(n)
    data[:5, 5] = np.nan  # four left
    data[:, 6] = [1, 1, 2, 2, 2, 3, 3, 3, 3]
    mask = np.zeros(data.shape, np.uint8)
    mask[:, 7] = 1
    scale = np.ones(n)
    for params in PARAMS.values():
        image, _, count = check_combine(data, mask, scale, None, params)
        assert count[1] == 0 and count[7] == 0 and np.isnan(image[[1, 7]]).all()
    image, uncert, count = check_combine(data, mask, scale, None, KernelParams())
    assert count[0] == n and image[0] == 1000.0 and uncert[0] == 0.0
    assert count[2] == n - 1 and image[2] == 1000.0


def test_combine_wide_band_all_kernels():
    """Many pixels, every local capacity forced, several launches."""
    rng = np.random.default_rng(3)
    data = flat_band(rng, 12, 3000)
    scale = 1.0 / rng.uniform(500.0, 2000.0, 12)
    kernels = (
        "gpuflat_combine_16",
        "gpuflat_combine_32",
        "gpuflat_combine_64",
        "gpuflat_combine_n",
    )
    check_combine(data, None, scale, None, KernelParams(), kernels=kernels, reference=False)


@pytest.mark.parametrize("name", PARAMS)
@pytest.mark.parametrize("scale_kind", ["one", "mixed", "tiny"])
def test_combine_subnormals_signed_zeros_nan_payloads(name, scale_kind):
    """Subnormal inputs (and subnormal scaled values), +0/-0 ties, NaNs with payloads:
    bit for bit the numba backend, and the survivors' rejected counts too."""
    rng = np.random.default_rng(len(name) * 31 + len(scale_kind))
    n = 11
    data = harness.special_band(rng, n, 64)
    scale = harness.special_scales(rng, n, scale_kind)
    mask = (rng.random(data.shape) < 0.05).astype(np.uint8)
    weight = rng.uniform(0.5, 2.0, n) if scale_kind == "mixed" else None
    want = check_combine(data, mask, scale, weight, PARAMS[name], reference=False)
    # the transcription of the contract agrees by value; by bits it may not, on one point:
    # both backends' V-walk gives MAD = -0.0 where S[q] = -0.0 and med = +0.0 (the contract
    # says |S[q] - med|, +0.0), so a median combine's uncertainty can be -0.0 there
    for g, w in zip(contract_combine(data, mask, scale, weight, PARAMS[name]), want, strict=True):
        np.testing.assert_array_equal(g, w)


SIGMAS = st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 5.0, float("inf")])


@st.composite
def params_strategy(draw):
    lo = draw(st.sampled_from([-math.inf, -1e31, 0.0, 900.0]))
    return KernelParams(
        clip_scaled=draw(st.integers(0, 1)),
        min_value=lo,
        max_value=draw(st.sampled_from([math.inf, 1e31, 1100.0, 3000.0])),
        nlow=draw(st.integers(0, 3)),
        nhigh=draw(st.integers(0, 3)),
        sigma=draw(st.integers(0, 1)),
        center=draw(st.integers(0, 1)),
        dev=draw(st.integers(0, 1)),
        sigma_low=draw(SIGMAS),
        sigma_high=draw(SIGMAS),
        maxiters=draw(st.sampled_from([-1, 0, 1, 2, 5])),
        method=draw(st.integers(0, 2)),
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 100),
    npix=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    distinct=st.sampled_from([1, 2, 3, 7, 0]),  # 0: continuous values
    nan=st.sampled_from([0.0, 0.1, 0.5]),
    outliers=st.sampled_from([0.0, 0.05, 0.3]),
    use_mask=st.booleans(),
    use_weight=st.booleans(),
    params=params_strategy(),
)
def test_combine_hypothesis(n, npix, seed, distinct, nan, outliers, use_mask, use_weight, params):
    rng = np.random.default_rng(seed)
    if distinct:
        data = rng.choice(rng.normal(1000.0, 30.0, distinct), size=(n, npix))
    else:
        data = rng.normal(1000.0, 30.0, (n, npix))
    big = rng.random(data.shape) < outliers
    data[big] = rng.choice([-1e30, 1e30, 0.0, 1e5, 10.0], size=big.sum())
    data = data.astype(np.float32)
    data[rng.random(data.shape) < nan] = rng.choice([np.nan, np.inf, -np.inf])
    mask = (rng.random(data.shape) < 0.2).astype(np.uint8) if use_mask else None
    scale = rng.choice([1.0, 1e-3, 1.0 / 3.0, 2.5], n) * rng.uniform(0.9, 1.1, n)
    weight = rng.uniform(0.1, 3.0, n) if use_weight else None
    check_combine(data, mask, scale, weight, params, reference=n <= 40)


# -- pclip (contract step 5d): the extended kernels only -------------------------------------

PCLIP_PARAMS = {
    "pclip": KernelParams(pclip=-0.5, sigma_low=3.0, sigma_high=3.0),
    "pclip-above": KernelParams(pclip=0.5, sigma_low=2.0, sigma_high=2.0),
    "pclip-pixels-below": KernelParams(pclip=-2.0, sigma_low=1.5, sigma_high=2.5, method=1),
    "pclip-pixels-above": KernelParams(pclip=3.0, sigma_low=1.0, sigma_high=1.0, method=2),
    "pclip-extreme": KernelParams(pclip=-0.99, sigma_low=0.5, sigma_high=0.5),
    "pclip-one-sided": KernelParams(pclip=-1.0, sigma_low=float("inf"), sigma_high=0.5),
    "pclip-zero-sigmas": KernelParams(pclip=1.0, sigma_low=0.0, sigma_high=0.0),
    "pclip-raw-median": KernelParams(pclip=-0.5, clip_scaled=0, sigma_low=1.0, method=1),
    "pclip-window": KernelParams(pclip=-0.3, nlow=1, nhigh=2, sigma_low=1.0, sigma_high=1.0),
    "pclip-minmax": KernelParams(pclip=2.0, min_value=900.0, max_value=1100.0, sigma_low=1.0),
    "pclip-nkeep": KernelParams(pclip=-0.5, nkeep=4, sigma_low=0.3, sigma_high=0.3),
    "pclip-nkeep-neg": KernelParams(pclip=1.0, nkeep=-1, sigma_low=0.2, sigma_high=0.2),
}
PCLIP_KERNELS = (None, "gpuflat_combine_xn", "gpuflat_combine_x64")


@pytest.mark.parametrize("name", PCLIP_PARAMS)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 8, 15, 16, 17, 33, 64, 65])
def test_pclip_matches_numba(name, n):
    """Bit for bit numba (and the transcription of the contract without nkeep), on the
    extended kernels; the plain ones refuse pclip (count -1)."""
    rng = np.random.default_rng(n * 1000 + len(name) + 7)
    data = flat_band(rng, n, 48, ties=n % 2 == 1)
    mask = (rng.random(data.shape) < 0.05).astype(np.uint8) if n % 3 else None
    scale = 1.0 / rng.uniform(500.0, 2000.0, n)
    weight = rng.uniform(0.5, 2.0, n) if n % 4 in (1, 2) else None
    params = PCLIP_PARAMS[name]
    kernels = PCLIP_KERNELS if n <= 64 else (None, "gpuflat_combine_xn")
    check_combine(data, mask, scale, weight, params, kernels=kernels, reference=not params.nkeep)
    _, _, count = harness.combine_band(data, mask, scale, weight, params, kernel=harness_default(n))
    assert (count == -1).all()


@pytest.mark.parametrize("name", PCLIP_PARAMS)
@pytest.mark.parametrize("scale_kind", ["one", "mixed", "tiny"])
def test_pclip_subnormals_signed_zeros_nan_payloads(name, scale_kind):
    rng = np.random.default_rng(len(name) * 13 + len(scale_kind))
    n = 11
    data = harness.special_band(rng, n, 64)
    scale = harness.special_scales(rng, n, scale_kind)
    mask = (rng.random(data.shape) < 0.05).astype(np.uint8)
    check_combine(data, mask, scale, None, PCLIP_PARAMS[name], kernels=PCLIP_KERNELS[:2],
                  reference=False)  # fmt: skip


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 70),
    npix=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    distinct=st.sampled_from([1, 2, 3, 7, 0]),
    nan=st.sampled_from([0.0, 0.1, 0.5]),
    outliers=st.sampled_from([0.0, 0.05, 0.3]),
    use_mask=st.booleans(),
    base=params_strategy(),
    pclip=st.sampled_from([-0.99, -0.5, -0.1, 0.1, 0.5, -1.0, 1.0, -3.0, 4.0, 100.0]),
    nkeep=st.sampled_from([0, 0, 1, 3, -1, 50]),
)
def test_pclip_hypothesis(n, npix, seed, distinct, nan, outliers, use_mask, base, pclip, nkeep):
    rng = np.random.default_rng(seed)
    if distinct:
        data = rng.choice(rng.normal(1000.0, 30.0, distinct), size=(n, npix))
    else:
        data = rng.normal(1000.0, 30.0, (n, npix))
    big = rng.random(data.shape) < outliers
    data[big] = rng.choice([-1e30, 1e30, 0.0, 1e5, 10.0], size=big.sum())
    data = data.astype(np.float32)
    data[rng.random(data.shape) < nan] = rng.choice([np.nan, np.inf, -np.inf])
    mask = (rng.random(data.shape) < 0.2).astype(np.uint8) if use_mask else None
    scale = rng.choice([1.0, 1e-3, 1.0 / 3.0, 2.5], n) * rng.uniform(0.9, 1.1, n)
    params = base._replace(sigma=1, pclip=pclip, nkeep=nkeep)
    check_combine(data, mask, scale, None, params, kernels=PCLIP_KERNELS[:2],
                  reference=n <= 40 and not nkeep)  # fmt: skip


# -- CPU execution: frame level --------------------------------------------------------------


def numba_level(frame, mask, how):
    if numba_backend is not None:
        return numba_backend.frame_level(frame, mask, how)
    good = np.isfinite(frame) & (True if mask is None else mask == 0)
    values = frame[good].astype(np.float64)
    if how == "median":
        return float(np.median(values)) if values.size else math.nan
    sums = [
        sum(float(x) for x, g in zip(r, gr, strict=True) if g)
        for r, gr in zip(frame, good, strict=True)
    ]
    total = 0.0
    for s in sums:
        total += s
    return total / values.size if values.size else math.nan


def assert_same_float(a, b):
    assert (math.isnan(a) and math.isnan(b)) or np.float64(a).view(np.uint64) == np.float64(b).view(
        np.uint64
    ), (a, b)


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (3, 5), (64, 64), (101, 203)])
@pytest.mark.parametrize(
    "kind", ["normal", "ties", "negative", "nan", "masked", "empty", "wide", "special"]
)
def test_frame_level(shape, kind):
    rng = np.random.default_rng(shape[0] * 7 + len(kind))
    frame = rng.normal(1000.0, 50.0, shape)
    mask = None
    if kind == "ties":
        frame = np.round(frame / 40.0)
    elif kind == "negative":
        frame -= 1000.0
        frame.flat[::3] = -0.0
        frame.flat[1::3] = 0.0
    elif kind == "nan":
        frame[rng.random(shape) < 0.3] = np.nan
        frame[rng.random(shape) < 0.1] = -np.inf
    elif kind == "masked":
        mask = (rng.random(shape) < 0.4).astype(np.uint8)
    elif kind == "empty":
        frame[:] = np.nan
    elif kind == "wide":
        frame = rng.choice([-3e38, -1e-40, 1e-45, 3e38, 1.0, 2.0], shape) * rng.uniform(
            1, 1.1, shape
        )
    frame = frame.astype(np.float32)
    if kind == "special":  # subnormals, signed zeros, NaN payloads: the mean keeps subnormals
        frame = harness.special_values(
            rng, shape, ["subnormal", "smallest normal", "signed zero", "nan payload"]
        )
    assert_same_float(harness.frame_level(frame, mask, "mean"), numba_level(frame, mask, "mean"))
    # the median is compared by value: when it is zero, which of +0.0 / -0.0 numba's
    # np.partition returns depends on the data's order (a zero level is an error anyway)
    got, want = harness.frame_level(frame, mask, "median"), numba_level(frame, mask, "median")
    assert (math.isnan(got) and math.isnan(want)) or got == want
    good = np.isfinite(frame) & (True if mask is None else mask == 0)
    want = float(np.median(frame[good].astype(np.float64))) if good.any() else math.nan
    got = harness.frame_level(frame, mask, "median")
    assert (math.isnan(want) and math.isnan(got)) or got == want


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(
        st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=300
    )
)
def test_frame_median_hypothesis(values):
    frame = np.array(values, np.float32).reshape(1, -1)
    good = frame[np.isfinite(frame)].astype(np.float64)
    want = float(np.median(good)) if good.size else math.nan
    got = harness.frame_level(frame, None, "median")
    assert (math.isnan(want) and math.isnan(got)) or got == want
    assert_same_float(harness.frame_level(frame, None, "mean"), numba_level(frame, None, "mean"))


# -- CPU execution: FITS conversion ----------------------------------------------------------


def _fits_pair(raw, bscale, bzero):
    """(big-endian raw bytes, astropy's scaled data as float32) for an in-memory FITS file."""
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BSCALE"] = bscale
    hdu.header["BZERO"] = bzero
    buf = io.BytesIO()
    hdu.writeto(buf)
    with fits.open(io.BytesIO(buf.getvalue()), do_not_scale_image_data=True) as f:
        raw_be = np.array(f[0].data).astype(f[0].data.dtype.newbyteorder(">"))
    with fits.open(io.BytesIO(buf.getvalue())) as f:
        want = np.array(f[0].data).astype(np.float32)
    return raw_be, want


@pytest.mark.parametrize(
    ("dtype", "bitpix"), [(np.int16, 16), (np.int32, 32), (np.float32, -32), (np.float64, -64)]
)
@pytest.mark.parametrize(
    ("bscale", "bzero"),
    [
        (1, 0),
        (1, 32768),
        (1, 2**31),
        (2.5, 100),
        (0.1, -3.3),
        (1, 1.5),
        (1e-3, 0),
        (-1, 0),
        # subnormal float32 results (and a subnormal float32 BSCALE / BZERO)
        (1e-42, 0),
        (3e-41, 0),
        (1e-40, 1e-39),
        (0.5, -7e-40),
    ],
)
def test_convert_matches_astropy(dtype, bitpix, bscale, bzero):
    rng = np.random.default_rng(abs(bitpix))
    info = np.iinfo(dtype) if np.dtype(dtype).kind == "i" else None
    if info is not None:
        raw = rng.integers(info.min, info.max, 5000, endpoint=True).astype(dtype)
        raw[:4] = [info.min, info.max, 0, -1]
    else:
        raw = (rng.normal(0, 1e4, 5000) * rng.choice([1, 1e-30, 1e30, 1e-42], 5000)).astype(dtype)
        raw[:6] = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-40]
        raw[6:12] = [1.4e-45, -1.4e-45, 1.1754942e-38, -5e-39, 2.0**-126, 3e-39]
    raw_be, want = _fits_pair(raw, bscale, bzero)
    assert raw_be.dtype.itemsize == abs(bitpix) // 8
    got = harness.convert(raw_be, bitpix, bscale, bzero)
    np.testing.assert_array_equal(got, want)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got.view(np.uint32)[finite], want.view(np.uint32)[finite])


# -- AddressSanitizer + UBSan ---------------------------------------------------------------

_ASAN_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    import cuda_harness as h
    from gpuflat.backends._params import KernelParams as P
    rng = np.random.default_rng(0)
    for n in (1, 5, 16, 17, 40, 64, 65, 130):
        d = rng.normal(1000, 30, (n, 257)).astype(np.float32)
        d[rng.random(d.shape) < 0.1] = np.nan
        m = (rng.random(d.shape) < 0.1).astype(np.uint8)
        s = rng.uniform(0.5, 2, n)
        w = rng.uniform(0.5, 2, n)
        for p in (P(), P(method=1, clip_scaled=0, nlow=1, nhigh=1, maxiters=-1),
                  P(center=1, dev=1, method=2, maxiters=-1, sigma_low=1.0, sigma_high=1.0),
                  P(ccdclip=1, nkeep=3, rdnoise=(5.0,) * n, gain=(2.0,) * n,
                    snoise=(0.01,) * n, maxiters=-1, sigma_low=1.0, sigma_high=1.0, method=1),
                  P(nkeep=-1, sigma_low=0.5, sigma_high=0.5),
                  P(pclip=-0.5, sigma_low=1.0, sigma_high=1.0, nlow=1),
                  P(pclip=3.0, nkeep=2, sigma_low=0.5, sigma_high=0.5, method=1)):
            x = p.ccdclip or p.nkeep or p.pclip
            for k in (None, "gpuflat_combine_xn" if x else "gpuflat_combine_n"):
                h.combine_band(d, m, s, w, p, kernel=k, pieces=3)
                h.combine_band(d, None, s, None, p, kernel=k)
            st = np.empty(d.shape, np.uint8)  # every sample's status (the grow's kernels)
            h.combine_band(d, m, s, w, p, pieces=3, status=st)
            h.combine_band(d, m, s, w, p, kernel="gpuflat_combine_sn", status=st)
    for n in h.ASAN_FAST:  # the fast kernels and their lists
        d = rng.normal(1000, 30, (n, 203)).astype(np.float32)
        d[rng.random(d.shape) < 0.02] = np.nan
        d[rng.random(d.shape) < 0.02] *= 5
        m = (rng.random(d.shape) < 0.02).astype(np.uint8)
        s = rng.uniform(0.5, 2, n)
        for p in (P(), P(method=2, sigma_low=2.0, sigma_high=2.0), P(method=1)):
            h.combine_band(d, m, s, rng.uniform(0.5, 2, n), p, kernel="fast", pieces=3,
                           rejected=np.zeros(n, np.uint64))
    f = rng.normal(1000, 30, (77, 131)).astype(np.float32)
    fm = (rng.random(f.shape) < 0.3).astype(np.uint8)
    for how in ("median", "mean"):
        h.frame_level(f, None, how); h.frame_level(f, fm, how)
        h.frame_level(np.full((3, 3), np.nan, np.float32), None, how)
    for bitpix, dt in ((16, ">i2"), (32, ">i4"), (-32, ">f4"), (-64, ">f8")):
        h.convert(np.arange(1001).astype(dt), bitpix, 2.0, 1.0)
    {extra}
    print("asan-run-ok")
    """
)


def _run_asan(extra=""):
    script = _ASAN_SCRIPT.format(tests=str(ROOT / "tests"), extra=extra)
    harness.build("asan")
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=harness.asan_env(),
        cwd=str(ROOT),
        timeout=300,
        check=False,
    )


def test_asan_ubsan_clean():
    res = _run_asan()
    report = res.stdout + res.stderr
    assert res.returncode == 0 and "asan-run-ok" in res.stdout, report[-4000:]
    assert "AddressSanitizer" not in report and "runtime error" not in report, report[-4000:]


def test_asan_catches_out_of_bounds():
    """Negative control: a launch that reads past the data must be reported."""
    bad = (
        "d = np.ones((3, 100), np.float32); out = np.empty(100); c = np.empty(100, np.int32);"
        " a = h.combine_args(d, None, np.ones(3), None, P(), 0, 100, None, out, out, c);"
        " a[4] = h.ctypes.c_int32(4);"  # claims 4 frames: the 4th row is past the end
        " h.launch('gpuflat_combine_16', 1, 128, a)"
    )
    res = _run_asan(bad)
    assert res.returncode != 0 and "AddressSanitizer" in res.stderr, res.stderr[-2000:]


# -- the fast kernels (kernels/fast.cu) --------------------------------------------------------
#
# Every test here has "fast" in its name (pytest -k fast). Each fast kernel is checked bit
# for bit against numba on the CPU build, through the backend's own launch sequence
# (``_cuda_fast.queue_combine``: the fast kernel, its clip list, its general list taken by
# the general kernel). The heavier sweep (every n under hypothesis with many examples) is
# marked ``sweep``: ``pytest -m sweep tests/test_cuda_kernels.py`` (docs/gpu.md).

FAST_N = tuple(range(1, 49))
FAST_PARAMS = {
    "guide": KernelParams(),
    "median": KernelParams(method=1),
    "sum": KernelParams(method=2),
    "iterate": KernelParams(maxiters=-1, sigma_low=2.0, sigma_high=2.0),
    "two-passes-sum": KernelParams(maxiters=2, sigma_low=2.5, sigma_high=2.5, method=2),
    "one-sided": KernelParams(sigma_low=float("inf"), sigma_high=1.5),
    "tight": KernelParams(sigma_low=0.5, sigma_high=0.5),
    "minmax": KernelParams(min_value=900.0, max_value=1100.0, sigma_low=3.0, sigma_high=3.0),
}


def fast_band(rng, n, npix):
    """Flats as they come (clipping about one pixel in 200... and more), with the cases
    the fast kernels must list or get right: NaN, inf, masks (caller), ties, MAD = 0,
    subnormals, signed zeros, huge values, exact outliers at the bounds."""
    data = flat_band(rng, n, npix, nan=0.0, outliers=0.004, ties=n % 3 == 0)
    cases = rng.integers(0, 12, npix)
    for p in np.flatnonzero(cases == 0):  # NaN or inf somewhere
        data[rng.integers(n), p] = rng.choice([np.nan, np.inf, -np.inf])
    for p in np.flatnonzero(cases == 1):  # every value equal: MAD = 0
        data[:, p] = data[0, p]
    for p in np.flatnonzero(cases == 2):  # one outlier among equal values
        data[:, p] = 1000.0
        data[rng.integers(n), p] = 1010.0
    for p in np.flatnonzero(cases == 3):  # subnormals, signed zeros
        data[:, p] = harness.special_values(rng, n, ["subnormal", "signed zero"])
    for p in np.flatnonzero(cases == 4):  # a few distinct values: ties
        data[:, p] = rng.choice(np.float32([990.0, 1000.0, 1010.0]), n)
    for p in np.flatnonzero(cases == 5):  # huge (|y| > 1e300 cannot come from float32 x
        data[:, p] = rng.choice(np.float32([3e38, -3e38, 1e38]), n)  # and 1/level scales)
    for p in np.flatnonzero(cases == 6):  # one zero
        data[rng.integers(n), p] = rng.choice(np.float32([0.0, -0.0]))
    return data


def _fast_case(n, name, seed):
    rng = np.random.default_rng(seed)
    npix = 96 if n <= 24 else 64
    data = fast_band(rng, n, npix)
    mask = (rng.random(data.shape) < 0.01).astype(np.uint8) if seed % 2 else None
    scale = 1.0 / rng.uniform(500.0, 2000.0, n)
    weight = rng.uniform(0.5, 2.0, n) if seed % 3 == 1 else None
    return data, mask, scale, weight, FAST_PARAMS[name]


@pytest.mark.parametrize("n", FAST_N)
def test_fast_kernels_match_numba(n):
    """Every fast kernel, every option set: bit for bit numba, rejected counts too."""
    for k, name in enumerate(FAST_PARAMS):
        data, mask, scale, weight, params = _fast_case(n, name, n * 16 + k)
        check_combine(data, mask, scale, weight, params, kernels=("fast",), reference=False)


def test_fast_kernels_special_values():
    """Subnormal inputs and scaled values, +0/-0, NaN payloads, infinities (the fast kernels
    list them all) and the ordinary pixels among them: bit for bit numba."""
    rng = np.random.default_rng(25)
    for n in (6, 11, 16, 17, 33, 48):  # special_band needs 6 frames
        data = harness.special_band(rng, n, 64)
        for kind in ("one", "mixed", "tiny"):
            scale = harness.special_scales(rng, n, kind)
            for name in ("guide", "median", "sum", "iterate"):
                check_combine(data, None, scale, None, FAST_PARAMS[name], kernels=("fast",),
                              reference=False)  # fmt: skip


def _expected_lists(data, mask, scale, params):
    """The pixels each list must hold, from the contract's definitions (NumPy)."""
    n = data.shape[0]
    y = data.astype(np.float64) * scale[:, None]
    ok = ((np.abs(y) > 0) & (np.abs(y) <= 1e300)).all(axis=0)
    x = data.astype(np.float64)
    ok &= ((x >= params.min_value) & (x <= params.max_value)).all(axis=0)
    if mask is not None:
        ok &= (mask == 0).all(axis=0)
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.sort(y, axis=0)
        med = (s[(n - 1) // 2] + s[n // 2]) * 0.5
        dev = np.sort(np.abs(y - med), axis=0)
        mad = (dev[(n - 1) // 2] + dev[n // 2]) * 0.5
        d = MAD_TO_STD * mad
        lo = -np.inf if params.sigma_low == np.inf else med - params.sigma_low * d
        hi = np.inf if params.sigma_high == np.inf else med + params.sigma_high * d
        clips = (s[0] < lo) | (s[-1] > hi)
    more = params.method == 1 or params.maxiters != 1
    general = ~ok | (clips & more)
    return np.flatnonzero(general), np.flatnonzero(ok & clips & ~more)


@pytest.mark.parametrize("n", [1, 2, 5, 15, 16, 17, 31, 40, 48])
def test_fast_lists_hold_the_right_pixels(n):
    """The general list holds exactly the pixels the fast kernel cannot vouch for (or that
    clip when the contract asks for more than the survivors' sums), the clip list exactly
    those that clip otherwise, each pixel once, over several chunks."""
    rng = np.random.default_rng(n)
    for name in ("guide", "median", "iterate", "minmax"):
        data = fast_band(rng, n, 300)
        mask = (rng.random(data.shape) < 0.003).astype(np.uint8)
        scale = 1.0 / rng.uniform(500.0, 2000.0, n)
        params = FAST_PARAMS[name]
        lists = []
        harness.fast_combine_band(data, mask, scale, None, params, pieces=3, lists=lists)
        general = np.concatenate([g for g, _ in lists])
        clipped = np.concatenate([c for _, c in lists])
        want_general, want_clipped = _expected_lists(data, mask, scale, params)
        np.testing.assert_array_equal(general, want_general)
        np.testing.assert_array_equal(clipped, want_clipped)
        if name == "guide" and n >= 5:
            assert general.size and clipped.size, (general.size, clipped.size)


def test_fast_eligibility_is_numba_fast_path():
    """``_cuda_fast.fast_eligible`` (no numba on the CUDA path) is numba's test, without
    ccdclip, nkeep and pclip, and up to 48 frames."""
    from gpuflat.backends._cuda_fast import FAST_MAX, fast_eligible
    from gpuflat.backends._fast_cu import FAST_MAX as GENERATED_MAX
    from gpuflat.backends._numba_fast import fast_eligible as numba_eligible

    assert FAST_MAX == GENERATED_MAX
    rng = np.random.default_rng(0)
    for _ in range(400):
        p = KernelParams(
            clip_scaled=int(rng.integers(2)), nlow=int(rng.integers(2)),
            nhigh=int(rng.integers(2)), sigma=int(rng.integers(2)),
            center=int(rng.integers(2)), dev=int(rng.integers(2)),
            maxiters=int(rng.choice([-1, 0, 1, 3])), method=int(rng.integers(3)),
            ccdclip=int(rng.integers(2)) * int(rng.random() < 0.2),
            nkeep=int(rng.random() < 0.2),
            pclip=float(rng.choice([0.0, -0.5, 2.0], p=[0.8, 0.1, 0.1])),
        )  # fmt: skip
        for n in (1, 15, 48, 49):
            want = numba_eligible(p, n) and not (p.ccdclip or p.nkeep or p.pclip) and n <= 48
            assert fast_eligible(p, n) == want, (p, n)


def test_fast_source_is_current():
    """kernels/fast.cu is what ``_fast_cu.render`` makes of the networks."""
    from gpuflat.backends import _fast_cu

    assert _fast_cu.FAST_CU == ROOT / "kernels" / "fast.cu"
    assert _fast_cu.FAST_CU.read_text() == _fast_cu.render(), (
        "run: python -m gpuflat.backends._generate"
    )


def _apply(net, values):
    v = values.copy()
    for a, b in net:
        lo, hi = np.minimum(v[:, a], v[:, b]), np.maximum(v[:, a], v[:, b])
        v[:, a], v[:, b] = lo, hi
    return v


def test_fast_networks_sort():
    """The fast kernels' comparators sort: every 0/1 input up to 16 frames (the 0-1
    principle), random inputs with ties for every n; and the MAD's splits give the median
    of the deviations."""
    from gpuflat.backends._fast_cu import GREEN16, SORT8, kth_terms, sort_network

    assert len(GREEN16) == 60 and len(SORT8) == 19
    for n in range(1, 17):
        bits = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.int8)
        got = _apply(sort_network(n), bits)
        assert (np.diff(got, axis=1) >= 0).all(), n
    rng = np.random.default_rng(1)
    for n in range(1, 49):
        values = rng.integers(0, 5 if n % 2 else 1000, (300, n)).astype(np.float64)
        np.testing.assert_array_equal(_apply(sort_network(n), values), np.sort(values, axis=1))
        s = np.sort(rng.normal(0, 1, (50, n)), axis=1)
        med = (s[:, (n - 1) // 2] + s[:, n // 2]) * 0.5
        dev = np.sort(np.abs(s - med[:, None]), axis=1)
        for r in {(n - 1) // 2, n // 2}:
            cands = []
            for a, b in kth_terms(n, r):
                sides = [med - s[:, a]] if a is not None else []
                sides += [s[:, b] - med] if b is not None else []
                cands.append(np.max(sides, axis=0))
            np.testing.assert_array_equal(np.min(cands, axis=0), dev[:, r])


def test_fast_kernels_through_fake_device():
    """The CUDA backend's combine_band on the deferred fake device takes the fast kernels
    for the guide's parameters (and the general kernel otherwise): bit for bit numba."""
    from fake_device import FakeDevice

    from gpuflat.backends._cuda import CudaBackend

    rng = np.random.default_rng(5)
    for n, params in ((15, KernelParams()), (40, KernelParams(method=2)), (15, PARAMS["ccdproc"])):
        data = fast_band(rng, n, 700)
        mask = (rng.random(data.shape) < 0.01).astype(np.uint8)
        scale = 1.0 / rng.uniform(500.0, 2000.0, n)
        dev = FakeDevice()
        backend = CudaBackend(dev, chunk_pixels=256)
        rejected = np.zeros(n, np.int64)
        got = backend.combine_band(data, mask, scale, None, params, rejected=rejected)
        want_rejected = np.zeros(n, np.int64)
        want = numba_backend.combine_band(data, mask, scale, None, params, rejected=want_rejected)
        assert_identical(got, want, f"fake device n={n}")
        np.testing.assert_array_equal(rejected, want_rejected)
        fast = f"gpuflat_fast_{n}" in dev.launches
        assert fast == fast_applies(n, params), dev.launches


@st.composite
def fast_params_strategy(draw):
    return KernelParams(
        min_value=draw(st.sampled_from([-math.inf, -1e31, 900.0])),
        max_value=draw(st.sampled_from([math.inf, 1e31, 1100.0])),
        sigma_low=draw(st.sampled_from([0.5, 1.0, 2.0, 3.0, 5.0, float("inf")])),
        sigma_high=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, float("inf")])),
        maxiters=draw(st.sampled_from([-1, 1, 1, 2, 5])),
        method=draw(st.integers(0, 2)),
    )


def _fast_hypothesis_case(n, npix, seed, distinct, outliers, use_mask, use_weight, params):
    rng = np.random.default_rng(seed)
    if distinct:
        data = rng.choice(rng.normal(1000.0, 30.0, distinct), size=(n, npix))
    else:
        data = rng.normal(1000.0, 30.0, (n, npix))
    big = rng.random(data.shape) < outliers
    data[big] = rng.choice([-1e30, 1e30, 0.0, -0.0, 1e5, 10.0, np.nan, np.inf], size=big.sum())
    data = data.astype(np.float32)
    mask = (rng.random(data.shape) < 0.05).astype(np.uint8) if use_mask else None
    scale = rng.choice([1.0, 1e-3, 1.0 / 3.0, 2.5], n) * rng.uniform(0.9, 1.1, n)
    weight = rng.uniform(0.1, 3.0, n) if use_weight else None
    check_combine(data, mask, scale, weight, params, kernels=("fast",), reference=False)


_FAST_GIVEN = {
    "n": st.integers(1, 48),
    "npix": st.integers(1, 40),
    "seed": st.integers(0, 2**32 - 1),
    "distinct": st.sampled_from([1, 2, 3, 7, 0, 0]),
    "outliers": st.sampled_from([0.0, 0.01, 0.05, 0.3]),
    "use_mask": st.booleans(),
    "use_weight": st.booleans(),
    "params": fast_params_strategy(),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**_FAST_GIVEN)
def test_fast_hypothesis(n, npix, seed, distinct, outliers, use_mask, use_weight, params):
    _fast_hypothesis_case(n, npix, seed, distinct, outliers, use_mask, use_weight, params)


@pytest.mark.sweep
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**_FAST_GIVEN)
def test_fast_hypothesis_sweep(n, npix, seed, distinct, outliers, use_mask, use_weight, params):
    _fast_hypothesis_case(n, npix, seed, distinct, outliers, use_mask, use_weight, params)


def _kernel_stats():
    path = ROOT / "bench" / "kernel_stats.py"
    spec = importlib.util.spec_from_file_location("kernel_stats", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_fast_gate(arch, ns):
    if NVCC is None:
        pytest.skip("nvcc not found on PATH")
    ks = _kernel_stats()
    if ks.nvdisasm() is None:
        pytest.skip("nvdisasm not found; pip install nvidia-cuda-nvdisasm")
    table = ks.stats(ns, arch, NVCC, general=False)
    assert set(table) == {f"gpuflat_fast_{n}" for n in ns} | {"gpuflat_fast_clip"}
    for name, r in table.items():
        assert r["stack"] == 0 and r["spill_stores"] == 0 and r["spill_loads"] == 0, (name, r)
        assert r["registers"] <= 255, (name, r)
    for n, limit in ks.TARGETS.items():
        assert table[f"gpuflat_fast_{n}"]["common_path"] <= limit, (n, table[f"gpuflat_fast_{n}"])
    return table


# the fast kernels nvcc builds on every run: one and two frames, the odd and full single
# runs, the first merge, a short last run, the targets' 15 and 40, the largest. Every fast
# kernel's stack is also read from the shipped fatbin, for every architecture, on every run
# (tests/test_cuda_prebuilt.py); the sweep builds them all here, for sm_80 and sm_90.
FAST_GATE_N = (1, 2, 15, 16, 17, 24, 33, 40, 48)


def test_fast_nvcc_no_local_memory_sm90():
    """The nvcc gate of the fast kernels (sm_90, the prebuilt kernels' options): no local
    memory at all (0 bytes of stack, no spills), and the common path within issue 25's
    targets (bench/kernel_stats.py prints the figures)."""
    table = _check_fast_gate("sm_90", FAST_GATE_N)
    # the common path grows with n (a sanity check of the trace)
    paths = [table[f"gpuflat_fast_{n}"]["common_path"] for n in FAST_GATE_N]
    assert paths == sorted(paths) and len(set(paths)) == len(paths), paths


@pytest.mark.sweep
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_fast_nvcc_no_local_memory_all(arch):
    _check_fast_gate(arch, FAST_N)


@pytest.mark.parametrize("major", NVRTC_MAJORS)
def test_fast_cupy_compile_has_no_ftz(major):
    """A fast kernel and the clip kernel as CuPy's NVRTC builds them (-ftz=true last, each
    kernel alone as the loader compiles it): no .ftz in the PTX, no .FTZ in the sm_90
    machine code."""
    from gpuflat.backends._kernels import cupy_nvrtc_options, nvrtc_source

    nv = _nvrtc(major)
    for kernel in ("gpuflat_fast_15", "gpuflat_fast_clip"):
        ptx, cubin = nv.compile(nvrtc_source("fast.cu", kernel), cupy_nvrtc_options("sm_90"),
                                "fast.cu")  # fmt: skip
        assert _listing(nvrtc_harness.ptx_instructions(ptx), _FTZ_PTX)[0] == 0, kernel
        code = nvrtc_harness.instructions(_sass(cubin))
        assert len(code) > 100 and _listing(code, _FTZ_SASS)[0] == 0, kernel


# -- CPU execution: every sample's status (contract step 8, for the grow) -------------------

STATUS_KERNELS = ("gpuflat_combine_s16", "gpuflat_combine_s32", "gpuflat_combine_s64",
                  "gpuflat_combine_sn")  # fmt: skip
STATUS_PARAMS = {
    **PARAMS,
    "ccdclip-nkeep": KernelParams(ccdclip=1, nkeep=3, sigma_low=1.0, sigma_high=1.0),
    "nkeep-neg-window": KernelParams(nkeep=-1, nlow=1, nhigh=1, sigma_low=0.5, maxiters=-1),
}


def check_status(data, mask, scale, weight, params):
    """The status kernels (``gpuflat_combine_s*``) against the numba backend's status path,
    bit for bit (results and statuses); and the statuses against the plain combination:
    0 exactly where a sample is not valid (step 1), as many 1s as the count, as many 2s
    per frame as its rejected samples, the results the same bits."""
    from gpuflat.backends import NumbaBackend, _numba_grow

    n, npix = data.shape
    if params.ccdclip:
        rng = np.random.default_rng(n)
        rd, gain = tuple(rng.uniform(2, 9, n)), tuple(rng.uniform(0.5, 3, n))
        params = params._replace(rdnoise=rd, gain=gain, snoise=(0.01,) * n)
    want_status = np.full((n, npix), 9, np.uint8)
    want = _numba_grow.combine_band_status(data, mask, scale, weight, params, None, want_status)
    rejected = np.zeros(n, np.int64)
    plain = numba_backend.combine_band(data, mask, scale, weight, params, rejected=rejected)
    assert_identical(want, plain, f"status path vs combine_band {params}")
    x = data.astype(np.float64)
    valid = np.isfinite(data) & (x >= params.min_value) & (x <= params.max_value)
    if mask is not None:
        valid &= mask == 0
    np.testing.assert_array_equal(want_status != 0, valid)
    np.testing.assert_array_equal((want_status == 1).sum(0), want[2])
    np.testing.assert_array_equal((want_status == 2).sum(1), rejected)
    with_status = np.zeros(n, np.int64)  # the backend's rejected counts with statuses too
    NumbaBackend().combine_band(data, mask, scale, weight, params, rejected=with_status,
                                status=np.empty((n, npix), np.uint8))  # fmt: skip
    np.testing.assert_array_equal(with_status, rejected)
    for kernel in STATUS_KERNELS:
        cap = kernel.rsplit("_s", 1)[1]
        if cap.isdigit() and n > int(cap):
            continue
        status = np.full((n, npix), 9, np.uint8)
        got = harness.combine_band(data, mask, scale, weight, params, kernel=kernel, pieces=2,
                                   status=status)  # fmt: skip
        assert_identical(got, want, f"{kernel} {params}")
        np.testing.assert_array_equal(status, want_status, err_msg=f"{kernel} {params}")


@pytest.mark.parametrize("name", STATUS_PARAMS)
@pytest.mark.parametrize("n", [1, 2, 5, 16, 17, 40, 65])
def test_status_matches_numba(name, n):
    rng = np.random.default_rng(n * 31 + len(name))
    data = flat_band(rng, n, 37, ties=n % 2 == 1)
    mask = (rng.random(data.shape) < 0.05).astype(np.uint8) if n % 3 else None
    scale = 1.0 / rng.uniform(500.0, 2000.0, n)
    weight = rng.uniform(0.5, 2.0, n) if n % 4 in (1, 2) else None
    check_status(data, mask, scale, weight, STATUS_PARAMS[name])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 70),
    npix=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    distinct=st.sampled_from([1, 2, 3, 0]),
    nan=st.sampled_from([0.0, 0.1, 0.5]),
    use_mask=st.booleans(),
    params=params_strategy(),
    ccdclip=st.integers(0, 1),
    nkeep=st.sampled_from([0, 0, 1, 3, -1]),
)
def test_status_hypothesis(n, npix, seed, distinct, nan, use_mask, params, ccdclip, nkeep):
    rng = np.random.default_rng(seed)
    if distinct:
        data = rng.choice(rng.normal(1000.0, 30.0, distinct), size=(n, npix))
    else:
        data = rng.normal(1000.0, 30.0, (n, npix))
    big = rng.random(data.shape) < 0.1
    data[big] = rng.choice([-1e30, 1e30, 0.0, 1e5, 10.0], size=big.sum())
    data = data.astype(np.float32)
    data[rng.random(data.shape) < nan] = rng.choice([np.nan, np.inf, -np.inf])
    mask = (rng.random(data.shape) < 0.2).astype(np.uint8) if use_mask else None
    scale = rng.choice([1.0, 1e-3, 1.0 / 3.0, 2.5], n) * rng.uniform(0.9, 1.1, n)
    params = params._replace(ccdclip=ccdclip, nkeep=nkeep)
    check_status(data, mask, scale, None, params)
