"""The CUDA kernels as the host sees them, without CuPy: their sources, the compile options,
the prebuilt kernels (``kernels/*.fatbin``, their manifest, which way a device gets its
kernels), the kernel chosen for a stack, the arguments of the conversion, and the reading of
a frame median from ``level.cu``'s radix-select state. Shared by ``_cuda.py`` (CuPy),
``_feed.py`` (the host path) and ``_build.py`` (``make kernels``), and by the tests' CPU
builds of the same sources."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from importlib import resources
from pathlib import Path

import numpy as np

#: nvcc/NVRTC options: no fused multiply-add, or results drift from the numba backend.
COMPILE_OPTIONS = ("--fmad=false", "-std=c++17")
#: What CuPy's RawModule puts after COMPILE_OPTIONS on every compile (CuPy 13 and 14, NVRTC
#: backend; cupy/cuda/compiler.py and cupy/_core/core.pyx): ``-ftz=true``, the target
#: ``-arch=sm_XX`` and ``--device-as-default-execution-space`` (before them, ``-I`` paths to
#: its own headers, which the kernels do not include). NVRTC takes the last ``-ftz``, so a
#: ``-ftz=false`` of ours could not undo it: the kernels are written so that flushing
#: subnormals cannot change a result (inline PTX without ``.ftz``, kernels/combine.cu
#: ``gf_widen``), and tests/test_cuda_kernels.py checks the machine code that
#: :func:`cupy_nvrtc_options` gives.
CUPY_FTZ = "-ftz=true"
CUPY_TRAILING_OPTIONS = ("--device-as-default-execution-space",)
BLOCK = 128  # threads per block
CHUNK_BYTES = 64 << 20  # input bytes per chunk and slot
LEVEL_COPIES = 32  # GF_COPIES in level.cu
_KEY_SIGN = np.uint32(0x80000000)


def _kernel_source(name: str) -> str:
    """The text of ``kernels/<name>``: from the installed package, else the repository."""
    try:
        path = resources.files("gpuflat.kernels").joinpath(name)
        if path.is_file():
            return path.read_text(encoding="utf-8")
    except ModuleNotFoundError:
        pass
    return (Path(__file__).resolve().parents[2] / "kernels" / name).read_text(encoding="utf-8")


def kernel_file(name: str) -> Path | None:
    """``kernels/<name>`` as a file on disk (the driver loads a fatbin from a path): in the
    installed package, else in the repository; None where there is none."""
    try:
        path = resources.files("gpuflat.kernels").joinpath(name)
        if isinstance(path, Path) and path.is_file():
            return path
    except ModuleNotFoundError:
        pass
    path = Path(__file__).resolve().parents[2] / "kernels" / name
    return path if path.is_file() else None


def cupy_nvrtc_options(arch: str) -> tuple[str, ...]:
    """The NVRTC options CuPy's RawModule compiles the kernels with for ``arch``
    (``"sm_90"``), include paths left out: COMPILE_OPTIONS, then CuPy's own."""
    return (*COMPILE_OPTIONS, CUPY_FTZ, f"-arch={arch}", *CUPY_TRAILING_OPTIONS)


# -- the prebuilt kernels (kernels/*.fatbin) ---------------------------------------------------

#: the kernel files; each is built into one fatbin (``kernels/<stem>.fatbin``)
KERNEL_FILES = ("combine.cu", "level.cu", "convert.cu", "fast.cu")
#: the machine code every fatbin holds, and the PTX the driver can compile for later GPUs
FATBIN_SASS = ("sm_80", "sm_86", "sm_89", "sm_90")
FATBIN_PTX = "compute_80"
#: nvcc's options for the fatbins: the NVRTC path's arithmetic (COMPILE_OPTIONS: no fused
#: multiply-add; IEEE division and square root, NVRTC's defaults too), and no flush-to-zero
#: (nvcc's default, kept explicit: CuPy's NVRTC compile gets -ftz=true, which the kernels are
#: written to be immune to, see CUPY_FTZ). No -Xptxas/-Werror here: nvcc writes ptxas'
#: options into the machine code (and those for the PTX into the fatbin, for the driver's
#: JIT), so they would change the bytes. Compressed for size (a CUDA 13 driver, >= 580,
#: reads every compression mode).
FATBIN_OPTIONS = (
    "--fmad=false",
    "-ftz=false",
    "-prec-div=true",
    "-prec-sqrt=true",
    "-std=c++17",
    "--compress-mode=size",
)
#: the manifest ``make kernels`` writes beside the fatbins
MANIFEST = "prebuilt.json"
_ENTRY = re.compile(r'^extern "C" __global__ void (\w+)\(', re.M)


@functools.cache
def kernel_names(source: str) -> tuple[str, ...]:
    """The kernels (``extern "C"`` entry points) of ``kernels/<source>``, in file order."""
    return tuple(_ENTRY.findall(_kernel_source(source)))


def source_sha256(source: str) -> str:
    """sha256 of ``kernels/<source>`` as shipped (its UTF-8 text)."""
    return hashlib.sha256(_kernel_source(source).encode("utf-8")).hexdigest()


def fatbin_name(source: str) -> str:
    """``combine.cu`` -> ``combine.fatbin``."""
    return source.rsplit(".", 1)[0] + ".fatbin"


def nvrtc_source(source: str, kernel: str) -> str:
    """The text NVRTC compiles for one kernel: ``kernels/<source>`` with only ``kernel`` left
    in (each entry point is guarded by GPUFLAT_ONLY / GPUFLAT_ONLY_<name>). A text of its own
    per kernel, so that CuPy caches each kernel's binary under its own key."""
    if kernel not in kernel_names(source):
        raise ValueError(f"{source} has no kernel {kernel!r} (it has {kernel_names(source)})")
    return (
        f'#define GPUFLAT_ONLY\n#define GPUFLAT_ONLY_{kernel}\n#line 1 "{source}"\n'
        + _kernel_source(source)
    )


def prebuilt_manifest() -> dict | None:
    """``kernels/prebuilt.json`` (what ``make kernels`` built, from which sources, with which
    nvcc and options), or None where it is missing or unreadable."""
    path = kernel_file(MANIFEST)
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def stale_reason(source: str, manifest: dict | None) -> str | None:
    """Why ``kernels/<source>``'s fatbin must not be used (missing, or built from another
    text of the source: ``make kernels`` was not run after an edit); None when it may."""
    if manifest is None:
        return f"no prebuilt kernels ({MANIFEST} is missing)"
    entry = manifest.get("files", {}).get(source)
    if entry is None:
        return f"{MANIFEST} lists no {source}"
    if kernel_file(entry["fatbin"]) is None:
        return f"kernels/{entry['fatbin']} is missing"
    if entry["source_sha256"] != source_sha256(source):
        return f"kernels/{source} changed since its fatbin was built (run `make kernels`)"
    return None


def _arch(cc) -> tuple[int, int]:
    """(major, minor) of a compute capability given as CuPy does ("90", "100"), or as
    "sm_90" / "compute_80", or as a (major, minor) pair."""
    if isinstance(cc, tuple):
        return int(cc[0]), int(cc[1])
    digits = str(cc).rsplit("_", 1)[-1].rstrip("af")
    return int(digits[:-1]), int(digits[-1])


def _driver_text(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def sass_for(cc, manifest: dict | None) -> str | None:
    """The fatbins' machine code a GPU of compute capability ``cc`` runs ("sm_86" for an
    sm_87: same major, the highest minor not above its own), or None."""
    if manifest is None:
        return None
    major, minor = _arch(cc)
    fits = [a for a in manifest["sass"] if _arch(a)[0] == major and _arch(a)[1] <= minor]
    return max(fits, key=_arch) if fits else None


def kernel_plan(cc, driver: int, manifest: dict | None) -> tuple[tuple[str, str], ...]:
    """The ways a device of compute capability ``cc`` (CuPy's "90") under a CUDA driver of
    version ``driver`` (CuPy's 13000) gets its kernels, to try in order: ("fatbin", why) or
    ("nvrtc", why).

    - The fatbin holds SASS for this GPU (same major, minor no higher): it, then NVRTC.
    - A newer GPU (>= compute_80 without SASS here: sm_100, sm_120...): NVRTC, one kernel
      at a time, then the fatbin, whose PTX the driver compiles. NVRTC first, because the
      driver's JIT compiles every kernel of a file at its first load (all eight combine
      kernels: ~15 s of ptxas on a 2-core machine, where NVRTC compiles the one a run uses
      in ~1.5 s); both are cached (CuPy's cache; the driver's ~/.nv/ComputeCache).
    - An older GPU (below compute_80), a driver older than the nvcc that built the fatbins,
      no fatbins: NVRTC only.
    """
    major, minor = _arch(cc)
    arch = f"sm_{major}{minor}"
    nvrtc = "NVRTC compiles the kernels in use, one at a time"
    if manifest is None:
        return (("nvrtc", f"{nvrtc}: no prebuilt kernels ({MANIFEST} is missing)"),)
    best = sass_for(cc, manifest)
    if best is not None:
        need = manifest["min_driver_sass"]
        if driver < need:
            return ((
                "nvrtc",
                f"{nvrtc}: the prebuilt kernels (nvcc {manifest['nvcc']}) need a CUDA "
                f"{_driver_text(need)} driver, this one is {_driver_text(driver)}",
            ),)  # fmt: skip
        return (
            ("fatbin", f"prebuilt {best} machine code for {arch}"),
            ("nvrtc", f"{nvrtc}, as the prebuilt kernels did not load"),
        )
    if (major, minor) < _arch(manifest["ptx"]):
        return (("nvrtc", f"{nvrtc}: {arch} is older than the prebuilt kernels ({FATBIN_PTX})"),)
    ways = [("nvrtc", f"{nvrtc}: no prebuilt machine code for {arch}")]
    if driver >= manifest["min_driver_ptx"]:
        ways.append(("fatbin", f"the prebuilt {manifest['ptx']} PTX, compiled by the driver"))
    return tuple(ways)


#: the stored dtype of each BITPIX (8 is unsigned bytes, the others big-endian)
BITPIX_DTYPES = {
    b: np.dtype(t)
    for b, t in {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}.items()
}
_CONVERT_SUFFIX = {
    ("u", 1): "u8", ("i", 2): "i16", ("i", 4): "i32", ("i", 8): "i64", ("f", 4): "f32",
    ("f", 8): "f64",
}  # fmt: skip


def convert_args(dtype, bscale, bzero, blank):
    """How ``kernels/convert.cu`` turns stored values of ``dtype`` into float32: (kernel,
    mode, bscale, bzero, has_blank, blank), decided by the rules of
    ``gpuflat._frames.scale_raw`` (the reference), so that the device gives its values."""
    dtype = np.dtype(dtype)
    kind, size = dtype.kind, dtype.itemsize
    kernel = "gpuflat_convert_" + _CONVERT_SUFFIX[(kind, size)]
    s, z = 1.0, 0.0
    if bscale == 1 and bzero == 0:
        mode = 0
    elif kind in "iu" and bscale == 1 and bzero == (-128 if size == 1 else 1 << (8 * size - 1)):
        mode = 1
    else:
        single = size == 4 if kind == "f" else size <= 2
        work = np.float32 if single else np.float64
        mode = 2 if single else 3
        if bscale != 1:
            mode |= 4
            s = float(work(bscale))
        if bzero != 0:
            mode |= 8
            z = float(work(bzero))
    has_blank, value = 0, 0
    # ``blank`` is an int (FitsFrame makes it one); one outside int64 matches no pixel
    if blank is not None and kind != "f" and -(2**63) <= blank < 2**63:
        has_blank, value = 1, int(blank)
    return kernel, mode, s, z, has_blank, value


def combine_kernel(n: int, extended: bool = False, status: bool = False) -> str:
    """The combine kernel for a stack of ``n`` frames; ``extended``: ccdclip, nkeep or pclip
    (the ``gpuflat_combine_x*`` kernels, ``_cuda_fast.extended``); ``status``: every
    sample's status too (the ``gpuflat_combine_s*`` kernels, extended, with one more
    argument)."""
    x = "s" if status else "x" if extended else ""
    for cap in (16, 32, 64):
        if n <= cap:
            return f"gpuflat_combine_{x}{cap}"
    return f"gpuflat_combine_{x}n"


LEVEL_BLOCK = 256  # threads of level.cu's reduce and select (one per digit)


def median_launches(d_frame, d_mask, pixels: int, d_state, d_hist, d_tot, block: int = BLOCK):
    """The launches (source, kernel, grid, block, args) of ``level.cu``'s exact median of
    ``pixels`` values, after ``d_state`` (uint32 [8]) was zeroed on the stream and with
    ``d_hist`` (uint32 [2 * LEVEL_COPIES * 256]) zero: per digit, the histogram pass, the
    reduction of its sub-histograms and the select, a block of 256 threads each."""
    grid = min(max(1, (pixels + block - 1) // block), 1024)
    out = []
    for shift in (24, 16, 8, 0):
        args = (d_frame, d_mask, np.int64(pixels), np.int32(shift), d_state, d_hist)
        out.append(("level.cu", "gpuflat_level_hist", grid, block, args))
        out.append(("level.cu", "gpuflat_level_reduce", 1, LEVEL_BLOCK, (d_state, d_hist, d_tot)))
        args = (d_state, d_tot, np.int32(shift))
        out.append(("level.cu", "gpuflat_level_select", 1, LEVEL_BLOCK, args))
    return out


def _float_of_key(key) -> float:
    key = np.uint32(key)
    bits = key & ~_KEY_SIGN if key & _KEY_SIGN else ~key
    return float(np.array(bits, np.uint32).view(np.float32))


def median_from_state(state: np.ndarray) -> float:
    """The frame median from the radix-select state that ``level.cu`` leaves."""
    if state[4] == 0:
        return float("nan")
    return (_float_of_key(state[0]) + _float_of_key(state[1])) * 0.5
