"""The CUDA kernels as the host sees them, without CuPy: their sources, the compile options,
the kernel chosen for a stack, the arguments of the conversion, and the reading of a
frame median from ``level.cu``'s radix-select state. Shared by ``_cuda.py`` (CuPy) and
``_feed.py`` (the host path), and by the tests' CPU builds of the same sources."""

from __future__ import annotations

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


def cupy_nvrtc_options(arch: str) -> tuple[str, ...]:
    """The NVRTC options CuPy's RawModule compiles the kernels with for ``arch``
    (``"sm_90"``), include paths left out: COMPILE_OPTIONS, then CuPy's own."""
    return (*COMPILE_OPTIONS, CUPY_FTZ, f"-arch={arch}", *CUPY_TRAILING_OPTIONS)


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


def combine_kernel(n: int, extended: bool = False) -> str:
    """The combine kernel for a stack of ``n`` frames; ``extended``: ccdclip or nkeep (the
    ``gpuflat_combine_x*`` kernels)."""
    x = "x" if extended else ""
    for cap in (16, 32, 64):
        if n <= cap:
            return f"gpuflat_combine_{x}{cap}"
    return f"gpuflat_combine_{x}n"


def _float_of_key(key) -> float:
    key = np.uint32(key)
    bits = key & ~_KEY_SIGN if key & _KEY_SIGN else ~key
    return float(np.array(bits, np.uint32).view(np.float32))


def median_from_state(state: np.ndarray) -> float:
    """The frame median from the radix-select state that ``level.cu`` leaves."""
    if state[4] == 0:
        return float("nan")
    return (_float_of_key(state[0]) + _float_of_key(state[1])) * 0.5
