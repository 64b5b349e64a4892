"""Compile gpuflat's kernels the way CuPy does, without CuPy or a GPU, and read the result.

CuPy's ``RawModule`` compiles with NVRTC and appends options of its own after gpuflat's
(:func:`gpuflat.backends._kernels.cupy_nvrtc_options` lists them). This module loads NVRTC
with ctypes, compiles a kernel file with exactly that option list to PTX and to a cubin for
a given ``sm_XX``, and disassembles the cubin with ``cuobjdump -sass`` (which runs
``nvdisasm``), so tests can check the machine code a GPU would run.

Where the tools come from (the ``test`` extra of pyproject.toml installs all of them):

- NVRTC 12: ``nvidia-cuda-nvrtc-cu12`` (``nvidia/cuda_nvrtc/lib/libnvrtc.so.12``);
- NVRTC 13: ``nvidia-cuda-nvrtc`` (``nvidia/cu13/lib/libnvrtc.so.13``);
- ``cuobjdump`` and ``nvdisasm``: ``nvidia-cuda-cuobjdump``, ``nvidia-cuda-nvdisasm``
  (``nvidia/cu13/bin``);
- or a CUDA toolkit: ``$CUDA_PATH``, ``$CUDA_HOME``, ``/usr/local/cuda`` (``lib64``, ``bin``),
  and ``PATH`` for the two programs.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"

_LIBNAME = re.compile(r"^libnvrtc\.so\.\d+(\.\d+)*$")
# an instruction line of cuobjdump -sass: "        /*0070*/                   FMUL.FTZ R0, R0, 1 ;"
_SASS_LINE = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", re.M)


def _toolkit_roots() -> list[Path]:
    roots = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    return [Path(r) for r in roots if r and Path(r).is_dir()]


def _wheel_dirs(sub: str) -> list[Path]:
    """``<entry>/nvidia/*/<sub>`` for every sys.path entry (the NVIDIA wheels' layout)."""
    found = []
    for entry in sys.path:
        base = Path(entry or ".") / "nvidia"
        if base.is_dir():
            found += sorted(p for p in base.glob(f"*/{sub}") if p.is_dir())
    return found


class Nvrtc:
    """One NVRTC library, loaded with ctypes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lib = ctypes.CDLL(str(self.path))
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self._lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "version")
        self.version = (major.value, minor.value)

    def _check(self, status: int, what: str, log: str = "") -> None:
        if status != 0:
            self._lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            msg = self._lib.nvrtcGetErrorString(status).decode()
            raise RuntimeError(f"NVRTC {what} failed: {msg}\n{log}")

    def compile(self, source: str, options, name: str = "kernel.cu") -> tuple[str, bytes]:
        """(PTX, cubin) of ``source`` compiled with ``options`` (which name one -arch=sm_XX)."""
        lib = self._lib
        prog = ctypes.c_void_p()
        status = lib.nvrtcCreateProgram(
            ctypes.byref(prog), source.encode(), name.encode(), 0, None, None
        )
        self._check(status, "create")
        try:
            opts = [o.encode() for o in options]
            argv = (ctypes.c_char_p * len(opts))(*opts)
            status = lib.nvrtcCompileProgram(prog, len(opts), argv)
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            self._check(status, f"compile of {name} with {' '.join(options)}", log.value.decode())
            lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
            ptx = ctypes.create_string_buffer(size.value)
            self._check(lib.nvrtcGetPTX(prog, ptx), "GetPTX")
            lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
            cubin = ctypes.create_string_buffer(size.value)
            self._check(lib.nvrtcGetCUBIN(prog, cubin), "GetCUBIN")
            return ptx.value.decode(), cubin.raw
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))


@functools.cache
def nvrtc_libraries() -> dict[int, Nvrtc]:
    """The NVRTC libraries found here, one per major version (wheels first)."""
    candidates = []
    for lib in _wheel_dirs("lib"):
        candidates += sorted(lib.iterdir())
    for root in _toolkit_roots():
        for sub in ("lib64", "lib"):
            if (root / sub).is_dir():
                candidates += sorted((root / sub).iterdir())
    found: dict[int, Nvrtc] = {}
    for path in candidates:
        if not _LIBNAME.match(path.name):
            continue
        try:
            nv = Nvrtc(path)
        except (OSError, RuntimeError):
            continue
        found.setdefault(nv.version[0], nv)
    return found


def tool(name: str) -> Path | None:
    """``cuobjdump`` / ``nvdisasm``: on PATH, in an NVIDIA wheel, or in a CUDA toolkit."""
    hit = shutil.which(name)
    if hit:
        return Path(hit)
    for d in [*_wheel_dirs("bin"), *(r / "bin" for r in _toolkit_roots())]:
        if (d / name).is_file() and os.access(d / name, os.X_OK):
            return d / name
    return None


def sass_tools_missing() -> str | None:
    """Why ``cuobjdump -sass`` cannot run here (None when it can)."""
    missing = [n for n in ("cuobjdump", "nvdisasm") if tool(n) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not found (pip install nvidia-cuda-cuobjdump "
            "nvidia-cuda-nvdisasm, or put a CUDA toolkit's bin on PATH)"
        )
    return None


def sass(cubin: bytes) -> str:
    """``cuobjdump -sass`` of a cubin."""
    cuobjdump, nvdisasm = tool("cuobjdump"), tool("nvdisasm")
    env = dict(os.environ)
    env["PATH"] = f"{nvdisasm.parent}{os.pathsep}{env.get('PATH', '')}"
    with tempfile.TemporaryDirectory(prefix="gpuflat-sass-") as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        res = subprocess.run(
            [str(cuobjdump), "-sass", str(path)], capture_output=True, text=True, env=env
        )
    if res.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed:\n{res.stdout}\n{res.stderr}")
    return res.stdout


def instructions(sass_text: str) -> list[str]:
    """The instructions of a SASS listing, in order, without addresses and encodings."""
    return _SASS_LINE.findall(sass_text)


def ptx_instructions(ptx: str) -> list[str]:
    """PTX lines that are instructions (no comments, directives or labels)."""
    out = []
    for line in ptx.splitlines():
        line = line.split("//", 1)[0].strip()
        if line and not line.startswith((".", "{", "}", "$")) and not line.endswith(":"):
            out.append(line)
    return out


@functools.cache
def compile_kernel_file(major: int, source: str, options: tuple[str, ...]) -> tuple[str, bytes]:
    """(PTX, cubin) of ``kernels/<source>`` with NVRTC ``major`` (cached per session)."""
    text = (KERNELS / source).read_text(encoding="utf-8")
    return nvrtc_libraries()[major].compile(text, options, source)
