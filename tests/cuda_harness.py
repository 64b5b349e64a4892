"""Run gpuflat's CUDA kernels on the CPU.

``kernels/cuda_shim.h`` lets g++ compile the very same ``.cu`` files as C++; this module
builds them into a shared library (once per flavour and digest of the sources, the flags and
the compiler: kept in a cache folder, see ``_cache_dir``), loads it with ctypes
and runs a kernel's launch grid through the ``gpuflat_host_<kernel>(grid, block, args)``
entries, which take their arguments as ``cudaLaunchKernel`` does (an array of pointers to
the values). On top of that it offers ``combine_band``, ``frame_level`` and ``convert``
with the CUDA backend's signatures, each a single direct launch (no streaming).

Flavours: ``"release"`` (-O2) and ``"asan"`` (AddressSanitizer + UBSan; load it only in a
process started with ``LD_PRELOAD`` of libasan, see :func:`asan_env`).
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"
SOURCES = ("combine.cu", "level.cu", "convert.cu", "fast.cu")
BLOCK = 128

BASE_FLAGS = (
    "-std=c++17",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-fPIC",
    "-shared",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-DGPUFLAT_HOST_SHIM",
)
FLAVOURS = {
    "release": ("-O2",),
    "asan": (
        "-O1",
        "-g",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
        "-fno-omit-frame-pointer",
    ),
}

# Kernel parameter types, in order: P pointer, i int, q long long, d double.
_COMBINE = "PPPPiqqqPiddiiiiiddiiiiiPPPPPPP"
SIGNATURES = {
    "gpuflat_combine_16": _COMBINE,
    "gpuflat_combine_32": _COMBINE,
    "gpuflat_combine_64": _COMBINE,
    "gpuflat_combine_n": _COMBINE,
    "gpuflat_combine_x16": _COMBINE,
    "gpuflat_combine_x32": _COMBINE,
    "gpuflat_combine_x64": _COMBINE,
    "gpuflat_combine_xn": _COMBINE,
    **{f"gpuflat_combine_s{c}": _COMBINE + "P" for c in ("16", "32", "64", "n")},
    **{f"gpuflat_fast_{n}": "PPPPqqqddddiiPPPPP" for n in range(1, 49)},
    "gpuflat_fast_clip": "PPPiqqqiPPPPPP",
    "gpuflat_level_hist": "PPqiPP",
    "gpuflat_level_reduce": "PPP",
    "gpuflat_level_select": "PPi",
    "gpuflat_level_rowsum": "PPqqPP",
    **{f"gpuflat_convert_{s}": "PqiddiqP" for s in ("u8", "i16", "i32", "i64", "f32", "f64")},
}
_CTYPES = {"P": ctypes.c_void_p, "i": ctypes.c_int32, "q": ctypes.c_int64, "d": ctypes.c_double}
# Positions of the pointer arguments a kernel writes (the rest it only reads).
WRITES = {name: (8, 25, 26, 27, 28) for name in SIGNATURES if name.startswith("gpuflat_combine")}
WRITES |= {name: (*WRITES[name], 31) for name in WRITES if name.startswith("gpuflat_combine_s")}
WRITES |= {
    name: (13, 14, 15, 16, 17)
    for name in SIGNATURES
    if name.startswith("gpuflat_fast_") and name != "gpuflat_fast_clip"
}
WRITES["gpuflat_fast_clip"] = (10, 11, 12, 13)
WRITES |= {
    "gpuflat_level_hist": (5,),
    "gpuflat_level_reduce": (0, 1, 2),
    "gpuflat_level_select": (0,),
    "gpuflat_level_rowsum": (4, 5),
}
WRITES |= {name: (7,) for name in SIGNATURES if name.startswith("gpuflat_convert")}

_libs: dict[str, ctypes.CDLL] = {}
_paths: dict[str, Path] = {}


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def _cache_dir() -> Path:
    """Where the built libraries are kept, by digest of everything that goes into them, so
    that later sessions and subprocesses (the ASan runs, a fresh process's fake device) load
    them instead of building again: ``$GPUFLAT_SHIM_CACHE``, else a folder of this user's in
    the temporary directory."""
    env = os.environ.get("GPUFLAT_SHIM_CACHE")
    path = Path(env) if env else Path(tempfile.gettempdir()) / f"gpuflat-shim-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


#: the fast kernels the AddressSanitizer build holds (all 48 take ~45 s to build there):
#: one run, two, an odd and a full run of 16, a short and a long last run, the largest
ASAN_FAST = (1, 2, 15, 16, 17, 24, 33, 48)


def _only(names) -> list[str]:
    return ["-DGPUFLAT_ONLY", *(f"-DGPUFLAT_ONLY_{k}" for k in names)]


def _parts(flavour):
    """(source, part, extra flags) of each compile: fast.cu (16,000 lines of straight-line
    code) without optimisation (-O0: 2x faster to build, the same SSE2 arithmetic, no
    contraction) in two halves that build at the same time, or, under AddressSanitizer,
    only ``ASAN_FAST``'s kernels."""
    for s in SOURCES:
        if s != "fast.cu":
            yield s, "", []
        elif flavour == "asan":
            names = ["gpuflat_fast_clip", *(f"gpuflat_fast_{n}" for n in ASAN_FAST)]
            yield s, "", ["-O0", *_only(names)]
        else:
            for half in (0, 1):
                names = [f"gpuflat_fast_{n}" for n in range(1 + half, 49, 2)]
                yield s, f"_{half}", ["-O0", *_only(names + ["gpuflat_fast_clip"] * half)]


def build(flavour: str = "release") -> Path:
    """Compile the kernels with the host shim; the path of the shared library (cached)."""
    if flavour in _paths:
        return _paths[flavour]
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no host C++ compiler (g++) found")
    common = [cxx, *BASE_FLAGS, *FLAVOURS[flavour], "-include", str(KERNELS / "cuda_shim.h")]
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256(repr((common, list(_parts(flavour)), version)).encode())
    for name in (*SOURCES, "cuda_shim.h"):
        digest.update((KERNELS / name).read_bytes())
    out = _cache_dir() / f"gpuflat_kernels_{flavour}_{digest.hexdigest()[:16]}.so"
    if not out.exists():
        _build(common, flavour, out)
    _paths[flavour] = out
    return out


def _build(common, flavour, out: Path) -> None:
    """Each source compiled on its own, at the same time (fast.cu's 49 straight-line kernels
    take the longest), then linked into ``out`` (atomically: another process may be
    building the same library)."""
    with tempfile.TemporaryDirectory(prefix="build-", dir=out.parent) as tmp:
        objects, procs = [], []
        for s, part, defines in _parts(flavour):
            obj = Path(tmp) / f"{s}{part}.o"
            cmd = [*common, *defines, "-c", "-x", "c++", str(KERNELS / s), "-o", str(obj)]
            objects.append(obj)
            procs.append((cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE, text=True)))  # fmt: skip
        done = [(cmd, proc, proc.communicate()[1]) for cmd, proc in procs]
        for cmd, proc, err in done:
            if proc.returncode != 0:
                raise RuntimeError(f"shim build failed:\n{' '.join(cmd)}\n{err}")
        lib = Path(tmp) / out.name
        cmd = [*common, *(str(o) for o in objects), "-o", str(lib)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"shim build failed:\n{' '.join(cmd)}\n{res.stderr}")
        os.replace(lib, out)


def load(flavour: str = "release") -> ctypes.CDLL:
    if flavour not in _libs:
        _libs[flavour] = ctypes.CDLL(str(build(flavour)))
    return _libs[flavour]


def asan_env() -> dict[str, str]:
    """Environment for a subprocess that loads the ``asan`` flavour."""
    libasan = subprocess.run(
        [compiler() or "g++", "-print-file-name=libasan.so"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = dict(os.environ)
    env["LD_PRELOAD"] = libasan
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=0:exitcode=23"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1:exitcode=24"
    env["GPUFLAT_SHIM_FLAVOUR"] = "asan"
    return env


def default_flavour() -> str:
    return os.environ.get("GPUFLAT_SHIM_FLAVOUR", "release")


def ptr(a) -> ctypes.c_void_p:
    """A pointer argument: the data of a NumPy array, or NULL for None."""
    return ctypes.c_void_p(None if a is None else a.ctypes.data)


def launch(name: str, grid: int, block: int, args, flavour: str | None = None) -> None:
    """Run kernel ``name`` over a 1-D grid on the CPU; ``args`` are ctypes values."""
    sig = SIGNATURES[name]
    if len(args) != len(sig):
        raise TypeError(f"{name} takes {len(sig)} arguments, got {len(args)}")
    for pos, (code, a) in enumerate(zip(sig, args, strict=True)):
        if not isinstance(a, _CTYPES[code]):
            raise TypeError(f"{name} argument {pos} must be {_CTYPES[code].__name__}, got {a!r}")
    lib = load(flavour or default_flavour())
    entry = getattr(lib, f"gpuflat_host_{name}")
    entry.restype = None
    dims = ctypes.c_uint * 3
    argv = (ctypes.c_void_p * len(args))(
        *(ctypes.cast(ctypes.byref(a), ctypes.c_void_p) for a in args)
    )
    entry(dims(grid, 1, 1), dims(block, 1, 1), argv)


def _blocks(threads: int) -> int:
    return max(1, (threads + BLOCK - 1) // BLOCK)


def combine_args(
    data, mask, scale, weight, params, p0, nthreads, scratch, image, uncert, count, rejected=None,
    noise=None,
):  # fmt: skip
    """The combine kernels' argument list as ctypes values (``noise``: the noise model
    table, ``_params.noise_table``, which the caller keeps alive; needed with ccdclip)."""
    from gpuflat.backends._params import KernelParams, pclip_offset

    n, npix = data.shape
    prm = KernelParams(*params)
    (clip_scaled, min_value, max_value, nlow, nhigh, sigma, center, dev, sigma_low, sigma_high,
     maxiters, method, ccdclip, nkeep) = prm[:14]  # fmt: skip
    pclip = pclip_offset(prm.pclip, n)
    if ccdclip and (noise is None or noise.size != 3 * n):
        raise ValueError("ccdclip needs the noise table of the n frames")
    i32, i64, f64 = ctypes.c_int32, ctypes.c_int64, ctypes.c_double
    return [
        ptr(data), ptr(mask), ptr(scale), ptr(weight),
        i32(n), i64(npix), i64(p0), i64(nthreads), ptr(scratch),
        i32(int(clip_scaled)), f64(min_value), f64(max_value), i32(nlow), i32(nhigh),
        i32(int(sigma)), i32(center), i32(dev), f64(sigma_low), f64(sigma_high),
        i32(maxiters), i32(method), i32(int(ccdclip)), i32(nkeep), i32(pclip), ptr(noise),
        ptr(image), ptr(uncert), ptr(count), ptr(rejected), ptr(None), ptr(None),
    ]  # fmt: skip


def combine_band(
    data, mask, scale, weight, params, *, kernel=None, pieces=1, flavour=None, rejected=None,
    status=None,
):  # fmt: skip
    """The combine kernel on the CPU, with the CUDA backend's signature (``rejected``: a
    uint64 array of n counters the kernel adds the rejected samples to; ``status``: a uint8
    [n, npix] array every sample's status is written to, by the ``gpuflat_combine_s*``
    kernels).

    ``kernel`` forces one of the combine kernels (default: the general kernel the backend
    picks; ``"fast"``: the fast kernels and their lists, see :func:`fast_combine_band`);
    ``pieces`` splits the pixels over that many launches (exercises ``p0``).
    """
    from gpuflat.backends._cuda_fast import extended
    from gpuflat.backends._kernels import combine_kernel
    from gpuflat.backends._params import KernelParams, noise_table

    if kernel == "fast":
        return fast_combine_band(
            data, mask, scale, weight, params, pieces=pieces, flavour=flavour, rejected=rejected
        )
    data = np.ascontiguousarray(data, np.float32)
    n, npix = data.shape
    noise = noise_table(KernelParams(*params), n)  # kept alive over the launches
    mask = None if mask is None else np.ascontiguousarray(mask, np.uint8)
    scale = np.ascontiguousarray(scale, np.float64)
    weight = None if weight is None else np.ascontiguousarray(weight, np.float64)
    prm = KernelParams(*params)
    kernel = kernel or combine_kernel(n, extended=extended(prm), status=status is not None)
    image = np.full(npix, -1.0)
    uncert = np.full(npix, -1.0)
    count = np.full(npix, -1, np.int32)
    bounds = np.linspace(0, npix, pieces + 1).astype(int)
    for p0, p1 in itertools.pairwise(bounds):
        w = int(p1 - p0)
        if w == 0:
            continue
        scratch = np.empty(9 * n * w, np.uint8) if kernel[-1] == "n" else None
        args = combine_args(
            data,
            mask,
            scale,
            weight,
            params,
            int(p0),
            w,
            scratch,
            image,
            uncert,
            count,
            rejected,
            noise if noise.size else None,
        )
        if kernel.startswith("gpuflat_combine_s"):
            args.append(ptr(status))
        launch(kernel, _blocks(w), BLOCK, args, flavour)
    return image, uncert, count


class DirectDevice:
    """The device interface of ``gpuflat.backends._cuda.CupyDevice`` where every launch
    runs at once through the CPU build (host arrays are the device's): enough for
    ``_cuda_fast.queue_combine``, so that the fast path's launches are the backend's."""

    _TYPES: ClassVar[dict] = {"i": np.int32, "q": np.int64, "d": np.float64}

    def __init__(self, flavour=None):
        self.flavour = flavour
        self.launches: list[tuple[str, int]] = []

    def empty(self, shape, dtype):
        a = np.empty(shape, dtype)
        a.reshape(-1).view(np.uint8)[...] = 0xA5  # garbage, as fresh device memory
        return a

    def zeros(self, shape, dtype, stream):
        return np.zeros(shape, dtype)

    def launch(self, source, name, grid, block, args, stream):
        assert name in (KERNELS / source).read_text(), (source, name)
        sig = SIGNATURES[name]
        assert len(args) == len(sig), (name, len(args))
        cargs = []
        for pos, (code, a) in enumerate(zip(sig, args, strict=True)):
            if code == "P":
                assert a is None or (isinstance(a, np.ndarray) and a.flags.c_contiguous), pos
                cargs.append(ptr(a))
            else:
                assert type(a) is self._TYPES[code], (name, pos, type(a))
                cargs.append(_CTYPES[code](a.item()))
        self.launches.append((name, grid))
        launch(name, grid, block, cargs, self.flavour)


def fast_combine_band(data, mask, scale, weight, params, *, pieces=1, flavour=None,
                      rejected=None, lists=None):  # fmt: skip
    """The fast kernels on the CPU, launched as the CUDA backend launches them
    (``_cuda_fast.queue_combine``: counters zeroed, ``gpuflat_fast_<n>``, the clip list,
    the general list), over ``pieces`` chunks; ``lists``: a list that gets, per chunk, the
    pixels of its general list and of its clip list (sorted)."""
    from gpuflat.backends._cuda_fast import fast_kernel, queue_combine
    from gpuflat.backends._params import KernelParams

    data = np.ascontiguousarray(data, np.float32)
    n, npix = data.shape
    prm = KernelParams(*params)
    assert fast_kernel(n, prm), "the fast kernels do not take these parameters"
    mask = None if mask is None else np.ascontiguousarray(mask, np.uint8)
    scale = np.ascontiguousarray(scale, np.float64)
    weight = None if weight is None else np.ascontiguousarray(weight, np.float64)
    rej = None if rejected is None else np.zeros(n, np.uint64)
    image = np.full(npix, -1.0)
    uncert = np.full(npix, -1.0)
    count = np.full(npix, -1, np.int32)
    dev = DirectDevice(flavour)
    for p0, p1 in itertools.pairwise(np.linspace(0, npix, pieces + 1).astype(int)):
        w = int(p1 - p0)
        if w == 0:
            continue
        # the chunk as the backend stages it: a [n, w] array of its own
        chunk = (
            np.ascontiguousarray(data[:, p0:p1]),
            None if mask is None else np.ascontiguousarray(mask[:, p0:p1]),
            w,
            image[p0:p1],
            uncert[p0:p1],
            count[p0:p1],
        )
        d_list, d_counts = queue_combine(
            dev, None, [chunk], n=n, stride=w, scale=scale, weight=weight, params=prm,
            noise=None, scratch=None, rejected=rej,
        )  # fmt: skip
        if lists is not None:
            g, c = int(d_counts[0]), int(d_counts[1])
            lists.append((np.sort(d_list[:g]) + p0, np.sort(d_list[w - c : w]) + p0))
    if rejected is not None:
        rejected += rej
    return image, uncert, count


def frame_level(frame, mask, how, *, flavour=None) -> float:
    """The level kernels on the CPU, with the CUDA backend's signature."""
    from gpuflat.backends._kernels import LEVEL_COPIES, median_from_state

    frame = np.ascontiguousarray(frame, np.float32)
    mask = None if mask is None else np.ascontiguousarray(mask, np.uint8)
    rows, cols = frame.shape
    i32, i64 = ctypes.c_int32, ctypes.c_int64
    if how == "mean":
        sums = np.empty(rows)
        counts = np.empty(rows, np.int64)
        args = [ptr(frame), ptr(mask), i64(rows), i64(cols), ptr(sums), ptr(counts)]
        launch("gpuflat_level_rowsum", _blocks(rows), BLOCK, args, flavour)
        k = int(counts.sum())
        total = float(np.cumsum(sums)[-1]) if rows else 0.0
        return total / k if k else float("nan")
    state = np.zeros(8, np.uint32)
    hist = np.zeros(2 * LEVEL_COPIES * 256, np.uint32)
    npix = rows * cols
    tot = np.full(512, 0xA5A5A5A5, np.uint32)
    for shift in (24, 16, 8, 0):
        args = [ptr(frame), ptr(mask), i64(npix), i32(shift), ptr(state), ptr(hist)]
        launch("gpuflat_level_hist", min(_blocks(npix), 40), BLOCK, args, flavour)
        launch("gpuflat_level_reduce", 1, 256, [ptr(state), ptr(hist), ptr(tot)], flavour)
        launch("gpuflat_level_select", 1, 256, [ptr(state), ptr(tot), i32(shift)], flavour)
    return median_from_state(state)


def convert(raw, bitpix, bscale, bzero, blank=None, *, flavour=None) -> np.ndarray:
    """The convert kernels on the CPU: big-endian FITS bytes -> float32 (BITPIX 8 is
    unsigned bytes), decided as the CUDA backend decides (``_kernels.convert_args``)."""
    from gpuflat.backends._kernels import BITPIX_DTYPES, convert_args

    dtype = BITPIX_DTYPES[bitpix]
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    count = raw.size // dtype.itemsize
    out = np.empty(count, np.float32)
    kernel, mode, s, z, has_blank, value = convert_args(dtype, bscale, bzero, blank)
    args = [
        ptr(raw), ctypes.c_int64(count), ctypes.c_int32(mode), ctypes.c_double(s),
        ctypes.c_double(z), ctypes.c_int32(has_blank), ctypes.c_int64(value), ptr(out),
    ]  # fmt: skip
    launch(kernel, _blocks(count), BLOCK, args, flavour)
    return out


# float32 bit patterns a flush-to-zero build would get wrong or that only compare by bits
SPECIAL_BITS = {
    "subnormal": [
        0x00000001,
        0x00000003,
        0x00012345,
        0x00400000,
        0x007FFFFF,
        0x80000001,
        0x80000007,
        0x803FFFFF,
        0x807FFFFF,
    ],
    "smallest normal": [0x00800000, 0x80800000],
    "signed zero": [0x00000000, 0x80000000],
    "nan payload": [0x7FC00000, 0x7FC00001, 0xFFC12345, 0x7F800001, 0xFF800001, 0x7FFFFFFF],
    "inf": [0x7F800000, 0xFF800000],
}


def special_values(rng, shape, kinds):
    bits = np.concatenate([np.array(SPECIAL_BITS[k], np.uint32) for k in kinds])
    return rng.choice(bits, shape).view(np.float32)


def special_band(rng, n, npix):
    """A band of subnormals, smallest normals and signed zeros, with NaN payloads and
    infinities in places; pixels 0-3 all subnormal, 4-7 all zeros, 8 six -0.0 then five +0.0,
    9 all NaN, 10-15 some ordinary values among the tiny ones (npix >= 16)."""
    data = special_values(rng, (n, npix), ["subnormal", "smallest normal", "signed zero"])
    odd = rng.random((n, npix)) < 0.15
    data[odd] = special_values(rng, odd.sum(), ["nan payload", "inf"])
    data[:, :4] = special_values(rng, (n, 4), ["subnormal"])
    data[:, 4:8] = special_values(rng, (n, 4), ["signed zero"])
    data[:, 8] = np.array([0x80000000] * 6 + [0] * (n - 6), np.uint32).view(np.float32)
    data[:, 9] = special_values(rng, n, ["nan payload"])
    k = min(6, n)
    data[:k, 10:16] = rng.normal(1.0, 0.1, (k, 6)).astype(np.float32)
    return data


def special_scales(rng, n, kind):
    """Scale factors: all one; mixed (y keeps subnormals); tiny (y subnormal in float64)."""
    if kind == "one":
        return np.ones(n)
    if kind == "mixed":
        return rng.choice([1.0, 0.5, 3.0, 1.0 / 3.0, 2.0**-30], n)
    return rng.choice([1e-300, 2.0**-1000, 5e-324 * 2**40], n)
