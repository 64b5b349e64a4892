"""``available()`` says exactly what the CUDA backend lacks, checked against a fake CuPy.

Runs everywhere (no CuPy or GPU needed): each case removes one piece (CuPy, the driver, a
device, NVRTC, the headers NVRTC needs) and the reason must name it; the GPU tests skip
with that reason.
"""

from __future__ import annotations

import sys
import types

import pytest

from gpuflat.backends import _cuda, get_backend
from gpuflat.errors import BackendUnavailableError


class FakeCupy(types.ModuleType):
    def __init__(self, *, driver=13000, devices=1, nvrtc=(13, 0), compile_error=None):
        super().__init__("cupy")
        self.__version__ = "14.2.0"
        self.compiled = []

        def value(v):
            if isinstance(v, Exception):
                raise v
            return v

        runtime = types.SimpleNamespace(
            driverGetVersion=lambda: value(driver), getDeviceCount=lambda: value(devices)
        )
        nvrtc_mod = types.SimpleNamespace(getVersion=lambda: value(nvrtc))
        self.cuda = types.SimpleNamespace(runtime=runtime, nvrtc=nvrtc_mod)
        outer = self

        class RawModule:
            def __init__(self, *, code, options):
                self.code, self.options = code, options

            def get_function(self, name):
                if compile_error is not None:
                    raise compile_error
                outer.compiled.append((self.code, self.options, name))
                return object()

        self.RawModule = RawModule


@pytest.fixture(autouse=True)
def fresh():
    _cuda.available.cache_clear()
    yield
    _cuda.available.cache_clear()


def reason(monkeypatch, fake):
    monkeypatch.setitem(sys.modules, "cupy", fake)
    ok, why = _cuda.available()
    return ok, why


def test_no_cupy(monkeypatch):
    ok, why = reason(monkeypatch, None)  # a None entry makes the import fail
    assert not ok and why.startswith("CuPy is not installed")
    assert "gpuflat[cuda12]" in why and "gpuflat[cuda13]" in why


def test_no_driver(monkeypatch):
    ok, why = reason(monkeypatch, FakeCupy(driver=0))
    assert not ok and why.startswith("no NVIDIA driver")


def test_driver_unloadable(monkeypatch):
    ok, why = reason(monkeypatch, FakeCupy(driver=OSError("libcuda.so.1: cannot open")))
    assert not ok and why.startswith("no NVIDIA driver") and "libcuda.so.1" in why


def test_no_device(monkeypatch):
    ok, why = reason(monkeypatch, FakeCupy(devices=0))
    assert not ok and why.startswith("no CUDA device")


def test_device_error(monkeypatch):
    err = RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    ok, why = reason(monkeypatch, FakeCupy(devices=err))
    assert not ok and why.startswith("no usable CUDA device") and "Insufficient" in why


def test_no_nvrtc(monkeypatch):
    err = RuntimeError("Failure finding libnvrtc.so")
    ok, why = reason(monkeypatch, FakeCupy(nvrtc=err))
    assert not ok and why.startswith("NVRTC is missing") and "libnvrtc" in why
    assert "gpuflat[cuda12]" in why


def test_no_headers(monkeypatch):
    err = RuntimeError("Failed to find CUDA headers. Please install CUDA toolkit headers")
    ok, why = reason(monkeypatch, FakeCupy(compile_error=err))
    assert not ok and why.startswith("CuPy cannot compile a kernel with NVRTC 13.0")
    assert "Failed to find CUDA headers" in why


def test_all_there_compiles_probe_with_backend_options(monkeypatch):
    fake = FakeCupy(driver=12080, devices=2, nvrtc=(12, 9))
    ok, why = reason(monkeypatch, fake)
    assert ok, why
    assert "2 device(s)" in why and "driver 12.8" in why and "NVRTC 12.9" in why
    [(code, options, name)] = fake.compiled
    assert options == _cuda.COMPILE_OPTIONS and name in code
    assert _cuda.available() == (ok, why) and len(fake.compiled) == 1  # once per process


def test_explicit_cuda_backend_error_names_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", FakeCupy(nvrtc=RuntimeError("no libnvrtc")))
    with pytest.raises(BackendUnavailableError, match="NVRTC is missing"):
        get_backend("cuda")
    assert get_backend("auto").name == "cpu"


def test_cupy_options_end_with_cupys_own():
    from gpuflat.backends import _kernels

    opts = _kernels.cupy_nvrtc_options("sm_90")
    assert opts[: len(_kernels.COMPILE_OPTIONS)] == _kernels.COMPILE_OPTIONS
    assert opts[len(_kernels.COMPILE_OPTIONS) :] == (
        "-ftz=true",
        "-arch=sm_90",
        "--device-as-default-execution-space",
    )
