"""The prebuilt CUDA kernels (kernels/*.fatbin, kernels/prebuilt.json), checked without a GPU.

- the manifest describes the shipped files: the sources' sha256 are the current sources'
  (else `make kernels` was not run after an edit), the fatbins' sha256 and sizes, the
  options and architectures of gpuflat/backends/_kernels.py; the package data ships them;
- where nvcc is the manifest's version, a rebuild gives the same bytes (slow; fast.cu's
  only under ``pytest -m sweep``);
- their machine code, read with cuobjdump/nvdisasm from the PyPI wheels: every kernel for
  every SASS architecture, the compute_80 PTX with every kernel, no flush-to-zero
  instruction anywhere, no register spills (no stack frame beyond the sort buffer);
- the NVRTC fallback compiles one kernel alone, into the same code as the whole file;
- the loader's decisions (which way for sm_75 ... sm_120, fallbacks, stale fatbins),
  warmup_cuda and cuda_cache_info, against a fake CuPy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import types
from fnmatch import fnmatch
from pathlib import Path

import nvrtc_harness
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from gpuflat.backends import _build, _cuda, _kernels
from gpuflat.backends._kernels import (
    COMPILE_OPTIONS,
    FATBIN_OPTIONS,
    FATBIN_PTX,
    FATBIN_SASS,
    KERNEL_FILES,
    MANIFEST,
)

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"
NVCC = shutil.which("nvcc")
_ENTRY = re.compile(r'^extern "C" __global__ void (\w+)\(', re.M)

#: every kernel a run can use: the 17 combine, level and conversion kernels, the level's
#: reduce, the 48 fast kernels and their clip pass, the grow's 4 status kernels
ALL = 71


def manifest() -> dict:
    return json.loads((KERNELS / MANIFEST).read_text())


def names(source: str) -> list[str]:
    return _ENTRY.findall((KERNELS / source).read_text())


# -- the manifest and the files it describes -------------------------------------------------


def test_manifest_matches_sources():
    """Fails when a kernel source changed without `make kernels` (or the files were edited
    by hand): the shipped machine code would not be the code of the sources."""
    m = manifest()
    assert set(m["files"]) == set(KERNEL_FILES)
    for source, entry in m["files"].items():
        text = (KERNELS / source).read_text(encoding="utf-8")
        assert entry["source_sha256"] == hashlib.sha256(text.encode()).hexdigest(), (
            f"kernels/{source} changed since its fatbin was built: run `make kernels`"
        )
        blob = (KERNELS / entry["fatbin"]).read_bytes()
        assert entry["fatbin_sha256"] == hashlib.sha256(blob).hexdigest(), entry["fatbin"]
        assert entry["bytes"] == len(blob)
        assert entry["kernels"] == names(source)
        assert entry["command"] == " ".join(_build.command(source))
        assert _kernels.stale_reason(source, m) is None


def test_manifest_options_are_the_builds():
    m = manifest()
    assert m["sass"] == list(FATBIN_SASS) == ["sm_80", "sm_86", "sm_89", "sm_90"]
    assert m["ptx"] == FATBIN_PTX == "compute_80"
    assert m["options"] == list(FATBIN_OPTIONS)
    major, minor = map(int, m["nvcc"].split(".")[:2])
    assert m["min_driver_sass"] == 1000 * major
    assert m["min_driver_ptx"] == 1000 * major + 10 * minor


def test_fatbin_options_keep_the_nvrtc_paths_arithmetic():
    """The same code as CuPy's NVRTC compile, less CuPy's -ftz=true (which the kernels are
    written to be immune to): no fused multiply-add, no fast math, no flush-to-zero."""
    for option in COMPILE_OPTIONS:
        assert option in FATBIN_OPTIONS
    assert "-ftz=false" in FATBIN_OPTIONS and "-ftz=true" not in FATBIN_OPTIONS
    assert "-prec-div=true" in FATBIN_OPTIONS and "-prec-sqrt=true" in FATBIN_OPTIONS
    assert not [o for o in FATBIN_OPTIONS if "fast" in o or o.startswith(("-X", "-Werror"))]


def test_package_data_ships_the_fatbins():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = conf["tool"]["setuptools"]["package-data"]["gpuflat.kernels"]
    entries = manifest()["files"].values()
    for name in [MANIFEST, *(e["fatbin"] for e in entries)]:
        assert any(fnmatch(name, g) for g in globs), name


def test_the_package_reads_this_checkouts_files():
    """_kernels finds the manifest and fatbins of this checkout (an editable install of
    another one maps gpuflat.kernels elsewhere)."""
    for name in [MANIFEST, *(e["fatbin"] for e in manifest()["files"].values())]:
        assert _kernels.kernel_file(name).read_bytes() == (KERNELS / name).read_bytes(), name
    assert _kernels.prebuilt_manifest() == manifest()


def test_fatbins_stay_small():
    total = sum(e["bytes"] for e in manifest()["files"].values())
    assert total < 2 << 20, f"{total} bytes of fatbins"


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH")
def test_rebuild_gives_the_shipped_bytes(tmp_path):
    """nvcc's fatbins depend on its version, the options and the sources only: the same
    nvcc rebuilds the shipped bytes. (A few minutes on a busy 2-core machine.) fast.cu's
    fatbin, which takes as long again, is rebuilt by the sweep below; its manifest entry
    (the source's sha256) is checked on every run."""
    _check_rebuild(tmp_path, [s for s in KERNEL_FILES if s != "fast.cu"])


@pytest.mark.sweep
@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH")
def test_rebuild_gives_the_shipped_bytes_fast(tmp_path):
    _check_rebuild(tmp_path, ["fast.cu"])


def _check_rebuild(tmp_path, sources):
    m = manifest()
    version = _build.nvcc_version(NVCC)[2]
    if version != m["nvcc"]:
        pytest.skip(f"nvcc {version} here, the fatbins were built by nvcc {m['nvcc']}")
    rebuilt = _build.build(tmp_path, NVCC, sources=sources, log=lambda *a: None)
    want = dict(m, files={s: m["files"][s] for s in sources})
    assert rebuilt == want, "run `make kernels`"
    for entry in want["files"].values():
        a, b = (tmp_path / entry["fatbin"]).read_bytes(), (KERNELS / entry["fatbin"]).read_bytes()
        if a != b:  # say where: the first architecture whose code differs
            for arch in FATBIN_SASS:
                got = _sass_by_kernel(tmp_path / entry["fatbin"], arch)
                assert got == _sass_by_kernel(KERNELS / entry["fatbin"], arch), (entry, arch)
        assert a == b, entry["fatbin"]


# -- the machine code --------------------------------------------------------------------------


def _tools():
    why = nvrtc_harness.sass_tools_missing()
    if why:
        pytest.skip(why)
    cuobjdump = nvrtc_harness.tool("cuobjdump")
    env = dict(os.environ)
    env["PATH"] = f"{nvrtc_harness.tool('nvdisasm').parent}{os.pathsep}{env.get('PATH', '')}"
    return cuobjdump, env


def _cuobjdump(*args) -> str:
    cuobjdump, env = _tools()
    res = subprocess.run([str(cuobjdump), *map(str, args)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, f"cuobjdump {args}: {res.stderr}"
    return res.stdout


def _elf_blocks(text: str):
    """(arch, block text) of every 'Fatbin elf code' section of a cuobjdump listing."""
    for block in text.split("Fatbin elf code:")[1:]:
        block = block.split("Fatbin ptx code:")[0]
        yield re.search(r"arch = (sm_\d+)", block)[1], block


def _sass_by_kernel(fatbin: Path, arch: str | None = None) -> dict:
    """{(arch, kernel): [instructions]} of a fatbin's machine code."""
    out = {}
    args = ["-sass", *(["-arch", arch] if arch else []), fatbin]
    for sm, block in _elf_blocks(_cuobjdump(*args)):
        for part in re.split(r"\n\s*Function : ", block)[1:]:
            name = part.split(None, 1)[0]
            out[(sm, name)] = nvrtc_harness.instructions(part)
    return out


def _resources(fatbin: Path) -> dict:
    """{(arch, kernel): (registers, stack bytes)} from cuobjdump --dump-resource-usage."""
    out = {}
    for sm, block in _elf_blocks(_cuobjdump("--dump-resource-usage", fatbin)):
        for name, reg, stack in re.findall(r"Function (\w+):\s*REG:(\d+) STACK:(\d+)", block):
            out[(sm, name)] = (int(reg), int(stack))
    return out


@pytest.fixture(scope="module", params=KERNEL_FILES)
def shipped(request):
    """(source, fatbin path, its SASS by (arch, kernel))."""
    source = request.param
    fatbin = KERNELS / manifest()["files"][source]["fatbin"]
    return source, fatbin, _sass_by_kernel(fatbin)


def test_fatbin_has_every_kernel_for_every_arch(shipped):
    source, fatbin, sass = shipped
    want = {(arch, k) for arch in FATBIN_SASS for k in names(source)}
    assert set(sass) == want
    for key, code in sass.items():
        assert len(code) > 10, f"{fatbin.name} {key}: {len(code)} instructions read"
    listed = _cuobjdump("--list-ptx", "--list-elf", fatbin)
    assert len(re.findall(r"^PTX file", listed, re.M)) == 1, listed
    assert len(re.findall(r"^ELF file", listed, re.M)) == len(FATBIN_SASS), listed


def test_fatbin_ptx_is_compute_80_with_every_kernel(shipped):
    source, fatbin, _ = shipped
    text = _cuobjdump("--dump-ptx", fatbin)
    assert re.search(r"^\.target sm_80$", text, re.M), text[:500]
    assert re.findall(r"\.visible \.entry (\w+)\(", text) and set(
        re.findall(r"\.visible \.entry (\w+)\(", text)
    ) == set(names(source))
    ftz = [i for i in nvrtc_harness.ptx_instructions(text) if re.search(r"\.ftz\b", i)]
    assert not ftz, f"{fatbin.name}: {len(ftz)} PTX instructions with .ftz: {ftz[:5]}"
    assert "ptxasOptions =  --fmad false" in text  # what the driver's JIT gets


def test_fatbin_sass_has_no_ftz(shipped):
    _, fatbin, sass = shipped
    for (arch, kernel), code in sass.items():
        ftz = [i for i in code if re.search(r"\.FTZ\b", i)]
        assert not ftz, f"{fatbin.name} {arch} {kernel}: {len(ftz)} with .FTZ: {ftz[:5]}"


def test_fatbin_has_no_register_spills(shipped):
    """A binary does not record spills apart from its stack frame, where they would live:
    each kernel's frame is its sort buffer (the local-store combine kernels, as
    tests/test_cuda_kernels.py asks of nvcc's -Xptxas -v) or nothing (the fast
    kernels, every other), so no spill fits. Registers within the limits that keep the
    general kernels' occupancy; the fast kernels hold their values in up to 255."""
    source, fatbin, _ = shipped
    res = _resources(fatbin)
    assert set(res) == {(arch, k) for arch in FATBIN_SASS for k in names(source)}
    for (arch, kernel), (regs, stack) in res.items():
        cap = kernel.rsplit("_", 1)[1].lstrip("xs")
        local = kernel.startswith("gpuflat_combine_") and cap.isdigit()
        most = 8 * int(cap) if local else 0
        assert stack <= most, f"{fatbin.name} {arch} {kernel}: {stack} bytes of stack"
        limit = 72 if kernel.startswith(("gpuflat_combine_x", "gpuflat_combine_s")) else 64
        if source == "fast.cu":
            limit = 255
        assert regs <= limit, f"{fatbin.name} {arch} {kernel}: {regs} registers"


@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH")
def test_ftz_detector_sees_flushes_in_a_fatbin(tmp_path):
    """Negative control: a fatbin built with -ftz=true holds .FTZ instructions and .ftz PTX,
    and the readers above find them (so their passing is not vacuous)."""
    (tmp_path / "control.cu").write_text(
        'extern "C" __global__ void control(const float *x, float *z) {\n'
        "  z[threadIdx.x] = x[threadIdx.x] * 3.0f + 1.0f;\n}\n"
    )
    opts = [o if o != "-ftz=false" else "-ftz=true" for o in FATBIN_OPTIONS]
    cmd = [NVCC, "-fatbin", *_build.gencode(), *opts, "-o", "control.fatbin", "control.cu"]
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    sass = _sass_by_kernel(tmp_path / "control.fatbin")
    assert set(sass) == {(arch, "control") for arch in FATBIN_SASS}
    assert all(any(".FTZ" in i for i in code) for code in sass.values())
    ptx = _cuobjdump("--dump-ptx", tmp_path / "control.fatbin")
    assert any(".ftz" in i for i in nvrtc_harness.ptx_instructions(ptx))
    assert _resources(tmp_path / "control.fatbin")[("sm_90", "control")][1] == 0


# -- the NVRTC fallback: one kernel at a time -----------------------------------------------------


def _nvrtc13():
    libs = nvrtc_harness.nvrtc_libraries()
    if 13 not in libs:
        pytest.skip("NVRTC 13 not found; pip install nvidia-cuda-nvrtc")
    return libs[13]


def _entries(ptx: str) -> list[str]:
    return re.findall(r"\.visible \.entry (\w+)\(", ptx)


def _function_sass(cubin: bytes, kernel: str) -> list[str]:
    text = nvrtc_harness.sass(cubin)
    [part] = [p for p in re.split(r"\n\s*Function : ", text)[1:] if p.split(None, 1)[0] == kernel]
    return nvrtc_harness.instructions(part)


@pytest.mark.parametrize("source", ["level.cu", "convert.cu"])
def test_nvrtc_compiles_one_kernel_into_the_whole_files_code(source):
    """nvrtc_source(source, k) holds kernel k only, compiled to the same machine code as k
    in the whole file (with CuPy's options)."""
    nv = _nvrtc13()
    if nvrtc_harness.sass_tools_missing():
        pytest.skip(nvrtc_harness.sass_tools_missing())
    options = _kernels.cupy_nvrtc_options("sm_90")
    _, whole = nvrtc_harness.compile_kernel_file(13, source, options)
    for kernel in names(source):
        ptx, cubin = nv.compile(_kernels.nvrtc_source(source, kernel), options, source)
        assert _entries(ptx) == [kernel]
        assert _function_sass(cubin, kernel) == _function_sass(whole, kernel), kernel


def test_nvrtc_compiles_one_combine_kernel():
    nv = _nvrtc13()
    options = _kernels.cupy_nvrtc_options("sm_90")
    for kernel in ("gpuflat_combine_16", "gpuflat_combine_xn"):
        ptx, _ = nv.compile(_kernels.nvrtc_source("combine.cu", kernel), options, "combine.cu")
        assert _entries(ptx) == [kernel]


def test_every_kernel_is_guarded_by_its_own_name():
    """Each entry point sits in its own #if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_k)
    (so nvrtc_source leaves exactly it), and kernel_names finds them all."""
    for source in KERNEL_FILES:
        text = (KERNELS / source).read_text()
        guarded = re.findall(
            r"^#if !defined\(GPUFLAT_ONLY\) \|\| defined\(GPUFLAT_ONLY_(\w+)\)\n"
            r'extern "C" __global__ void (\w+)\(',
            text,
            re.M,
        )
        assert guarded and all(a == b for a, b in guarded), source
        assert [b for _, b in guarded] == names(source) == list(_kernels.kernel_names(source))
    with pytest.raises(ValueError, match="no kernel"):
        _kernels.nvrtc_source("level.cu", "gpuflat_combine_16")


# -- the loader's decisions, against a fake CuPy --------------------------------------------------


class FakeCupy(types.ModuleType):
    """CuPy as the loader sees it: a device of compute capability ``cc``, a driver, and
    RawModule from a path (the driver's load, failing with ``load_error``) or from code
    (NVRTC, failing with ``compile_error``); it records what was loaded and compiled."""

    def __init__(self, cc="90", driver=13000, load_error=None, compile_error=None):
        super().__init__("cupy")
        self.__version__ = "14.2.0"
        self.loaded, self.compiled = [], []
        outer = self

        class Device:
            def __init__(self, i=0):
                self.id, self.compute_capability = i, cc

        class RawModule:
            def __init__(self, *, code=None, path=None, options=()):
                self.code, self.path, self.options = code, path, options

            def get_function(self, name):
                if self.path is not None:
                    if load_error is not None:
                        raise load_error
                    outer.loaded.append((Path(self.path).name, name))
                else:
                    if compile_error is not None:
                        raise compile_error
                    outer.compiled.append((self.code, self.options, name))
                return (self.path or "nvrtc", name)

        runtime = types.SimpleNamespace(
            driverGetVersion=lambda: driver,
            getDeviceCount=lambda: 1,
            getDeviceProperties=lambda i: {"name": b"Fake GPU"},
        )
        self.cuda = types.SimpleNamespace(Device=Device, runtime=runtime)
        self.RawModule = RawModule


#: compute capability -> the ways, in order (driver 13.0, the shipped manifest)
PLANS = {
    "80": ["fatbin", "nvrtc"],
    "86": ["fatbin", "nvrtc"],
    "87": ["fatbin", "nvrtc"],  # Orin: sm_86's machine code
    "89": ["fatbin", "nvrtc"],
    "90": ["fatbin", "nvrtc"],
    "100": ["nvrtc", "fatbin"],  # Blackwell: NVRTC, then the driver's JIT of the PTX
    "120": ["nvrtc", "fatbin"],
    "75": ["nvrtc"],  # Turing: below compute_80
    "70": ["nvrtc"],
}


@pytest.mark.parametrize(("cc", "ways"), PLANS.items())
def test_kernel_plan(cc, ways):
    plan = _kernels.kernel_plan(cc, 13000, manifest())
    assert [w for w, _ in plan] == ways
    if ways[0] == "fatbin":
        sm = _kernels.sass_for(cc, manifest())
        assert sm == {"87": "sm_86"}.get(cc, f"sm_{cc}") and sm in plan[0][1]
    else:
        assert _kernels.sass_for(cc, manifest()) is None


def test_kernel_plan_old_driver_or_no_fatbins():
    m = manifest()
    [(way, why)] = _kernels.kernel_plan("90", 12080, m)
    assert way == "nvrtc" and "CUDA 13.0 driver" in why and "12.8" in why
    assert [w for w, _ in _kernels.kernel_plan("100", 12080, m)] == ["nvrtc"]
    [(way, why)] = _kernels.kernel_plan("90", 13000, None)
    assert way == "nvrtc" and MANIFEST in why
    assert _kernels.kernel_plan("sm_90", 13000, m) == _kernels.kernel_plan((9, 0), 13000, m)


@pytest.fixture
def loader_for(monkeypatch):
    def make(manifest_=None, **kwargs):
        fake = FakeCupy(**kwargs)
        monkeypatch.setitem(sys.modules, "cupy", fake)
        return fake, _cuda.KernelLoader(fake, manifest() if manifest_ is None else manifest_)

    return make


@pytest.mark.parametrize("cc", ["80", "86", "89", "90"])
def test_loader_loads_the_fatbin(loader_for, cc):
    fake, loader = loader_for(cc=cc)
    for source in KERNEL_FILES:
        for kernel in names(source):
            path, name = loader.function(source, kernel)
            assert Path(path).resolve() == (KERNELS / _kernels.fatbin_name(source)).resolve()
            assert name == kernel
    assert not fake.compiled
    assert len(fake.loaded) == ALL and set(loader.ways.values()) == {"fatbin"}
    assert loader.function("level.cu", "gpuflat_level_hist") is not None
    assert len(fake.loaded) == ALL  # kept


@pytest.mark.parametrize("cc", ["75", "100", "120"])
def test_loader_nvrtc_compiles_only_the_kernel_in_use(loader_for, cc):
    fake, loader = loader_for(cc=cc)
    loader.function("combine.cu", "gpuflat_combine_16")
    loader.function("level.cu", "gpuflat_level_hist")
    assert not fake.loaded
    [(code, options, name), (code2, _, name2)] = fake.compiled
    assert (name, name2) == ("gpuflat_combine_16", "gpuflat_level_hist")
    assert options == COMPILE_OPTIONS
    assert code == _kernels.nvrtc_source("combine.cu", "gpuflat_combine_16")
    assert code2 == _kernels.nvrtc_source("level.cu", "gpuflat_level_hist")
    assert set(loader.ways.values()) == {"nvrtc"}


def test_loader_nvrtc_code_compiles_to_one_kernel(loader_for):
    """What the fallback hands CuPy, compiled by NVRTC: that kernel and no other."""
    nv = _nvrtc13()
    fake, loader = loader_for(cc="120")
    loader.function("convert.cu", "gpuflat_convert_i16")
    [(code, _, _)] = fake.compiled
    ptx, _ = nv.compile(code, _kernels.cupy_nvrtc_options("sm_90"), "convert.cu")
    assert _entries(ptx) == ["gpuflat_convert_i16"]


def test_loader_falls_back_to_nvrtc_when_the_fatbin_fails(loader_for, caplog):
    err = RuntimeError("CUDA_ERROR_NO_BINARY_FOR_GPU: no kernel image is available")
    fake, loader = loader_for(cc="90", load_error=err)
    with caplog.at_level(logging.INFO, logger="gpuflat"):
        loader.function("combine.cu", "gpuflat_combine_16")
        loader.function("combine.cu", "gpuflat_combine_32")
    assert [n for _, _, n in fake.compiled] == ["gpuflat_combine_16", "gpuflat_combine_32"]
    assert set(loader.ways.values()) == {"nvrtc"}
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "NO_BINARY_FOR_GPU" in warned[0].getMessage()
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(said) == 1 and "NVRTC" in said[0]  # said once


def test_loader_falls_back_to_the_ptx_when_nvrtc_fails(loader_for):
    fake, loader = loader_for(cc="100", compile_error=RuntimeError("invalid -arch=sm_100"))
    loader.function("level.cu", "gpuflat_level_select")
    assert fake.loaded == [("level.fatbin", "gpuflat_level_select")]
    assert loader.ways == {(0, "level.cu", "gpuflat_level_select"): "fatbin"}


def test_loader_refuses_a_stale_fatbin(loader_for):
    m = manifest()
    m["files"]["combine.cu"]["source_sha256"] = "0" * 64
    fake, loader = loader_for(m, cc="90")
    loader.function("combine.cu", "gpuflat_combine_16")
    loader.function("level.cu", "gpuflat_level_hist")
    assert [n for _, _, n in fake.compiled] == ["gpuflat_combine_16"]
    assert fake.loaded == [("level.fatbin", "gpuflat_level_hist")]
    assert "make kernels" in _kernels.stale_reason("combine.cu", m)


def test_loader_says_why_when_nothing_works(loader_for):
    _, loader = loader_for(
        cc="90", load_error=RuntimeError("bad fatbin"), compile_error=RuntimeError("no headers")
    )
    with pytest.raises(RuntimeError, match=r"fatbin: RuntimeError: bad fatbin; nvrtc: .*headers"):
        loader.function("combine.cu", "gpuflat_combine_16")


# -- warmup_cuda and cuda_cache_info -------------------------------------------------------------


@pytest.mark.parametrize(("cc", "way"), [("90", "fatbin"), ("75", "nvrtc")])
def test_warmup_loads_every_kernel(loader_for, monkeypatch, cc, way):
    fake, loader = loader_for(cc=cc)
    monkeypatch.setattr(_cuda, "available", lambda: (True, "fake"))
    monkeypatch.setattr(_cuda, "kernel_loader", lambda: loader)
    seen = []
    out = _cuda.warmup_cuda(progress=lambda done, total, name: seen.append((done, total, name)))
    everything = [k for s in KERNEL_FILES for k in names(s)]
    assert [s[2] for s in seen] == everything and seen[-1][:2] == (ALL, ALL)
    assert out["ok"] and out["kernels"] == ALL and out["ways"] == {way: ALL}
    assert out["device"] == {"id": 0, "compute_capability": cc}
    assert len(fake.compiled if way == "nvrtc" else fake.loaded) == ALL


def test_warmup_without_a_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    _cuda.available.cache_clear()
    try:
        out = _cuda.warmup_cuda()
    finally:
        _cuda.available.cache_clear()
    assert not out["ok"] and out["reason"].startswith("CuPy is not installed")
    assert out["kernels"] == 0


def test_cache_info_without_a_gpu(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "x.cubin").write_bytes(b"1234")
    info = _cuda.cuda_cache_info()
    assert info["cupy_cache_dir"] == str(tmp_path / "cache")
    assert info["cupy_cache_dir_from"] == "CUPY_CACHE_DIR"
    assert (info["cupy_cache_files"], info["cupy_cache_bytes"]) == (1, 4)
    assert info["device"] is None and info["covers_device"] is None
    assert info["reason"].startswith("no CUDA device to answer for")
    pre = info["prebuilt"]
    assert pre["sass"] == list(FATBIN_SASS) and pre["nvcc"] == manifest()["nvcc"]
    assert all(f["current"] for f in pre["files"].values())
    for cc, covers, way in [
        ("89", True, "fatbin"),
        ("sm_100", False, "nvrtc"),
        ("75", False, "nvrtc"),
    ]:
        info = _cuda.cuda_cache_info(cc)
        assert (info["covers_device"], info["kernels_from"]) == (covers, way), cc
    info = _cuda.cuda_cache_info("90", driver=12080)
    assert info["covers_device"] and info["kernels_from"] == "nvrtc"


def test_cache_info_default_folder_and_device(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cupy", FakeCupy(cc="86"))
    monkeypatch.delenv("CUPY_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    info = _cuda.cuda_cache_info()
    assert info["cupy_cache_dir"] == str(tmp_path / ".cupy" / "kernel_cache")
    assert info["cupy_cache_dir_from"] == "default" and info["cupy_cache_files"] == 0
    assert info["device"] == {"name": "Fake GPU", "compute_capability": "86", "driver": 13000}
    assert info["covers_device"] and info["kernels_from"] == "fatbin"
    assert "sm_86" in info["reason"]
