"""The CUDA backend: CuPy drives the kernels in ``kernels/*.cu``.

The backend is thin. A band is cut into pixel chunks; each chunk is staged in a pinned
host buffer, copied to the device on a non-blocking stream, combined there and copied
back, with two buffer slots so that one chunk's transfers overlap the other's kernel.
All device work goes through a small device object (:class:`CupyDevice` here; the tests
substitute a fake whose queued work only runs at synchronisation), so that the ordering
of copies, launches and synchronisations is tested without a GPU.

The pipeline's production path is :meth:`CudaBackend.open_feed` (``_feed.py``): stored
FITS bytes converted and measured on the device, the stack kept there between the passes
when it fits; ``combine_band`` and ``frame_level`` serve other callers (mosaic exposure
levels, the farm's median level, a ``scale`` callable).

The kernels come from the prebuilt fatbins (``kernels/*.fatbin``, ``make kernels``) where
they hold this GPU's machine code, else from NVRTC, one kernel at a time, as a run first
uses it (:class:`KernelLoader`; ``_kernels.kernel_plan`` decides). :func:`warmup_cuda`
loads or compiles them all ahead of a run, :func:`cuda_cache_info` says where they come
from and where compiled ones are kept.

CuPy is imported lazily: importing this module never needs it.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path

import numpy as np

from ._cuda_fast import extended, fast_kernel, queue_combine
from ._kernels import (
    BITPIX_DTYPES,
    BLOCK,
    CHUNK_BYTES,
    COMPILE_OPTIONS,
    KERNEL_FILES,
    LEVEL_COPIES,
    MANIFEST,
    combine_kernel,
    convert_args,
    fatbin_name,
    kernel_file,
    kernel_names,
    kernel_plan,
    median_from_state,
    median_launches,
    nvrtc_source,
    prebuilt_manifest,
    sass_for,
    stale_reason,
)
from ._params import KernelParams, noise_table

log = logging.getLogger("gpuflat")

#: A kernel that :func:`available` compiles to find out whether NVRTC works here.
_PROBE_SOURCE = 'extern "C" __global__ void gpuflat_probe(double *x) { x[0] = 1.0; }\n'
_INSTALL_HINT = (
    "install gpuflat[cuda12] (CUDA 12 driver) or gpuflat[cuda13] (CUDA 13 driver), which bring "
    "CuPy, NVRTC and the CUDA runtime headers from PyPI"
)


@functools.cache
def available() -> tuple[bool, str]:
    """Whether the CUDA backend can run here; when it cannot, what exactly is missing.

    Checked in order: CuPy imports; an NVIDIA driver is there; it sees a CUDA device;
    NVRTC loads and compiles a tiny kernel with the backend's options (CuPy needs the CUDA
    runtime headers for that too) and the driver loads it. The answer is computed once per
    process.
    """
    try:
        import cupy
    except ImportError as exc:
        return False, f"CuPy is not installed ({exc}); {_INSTALL_HINT}"
    except Exception as exc:  # a broken installation (two CuPy packages, missing libraries)
        return False, f"CuPy failed to import ({type(exc).__name__}: {exc})"
    runtime = cupy.cuda.runtime
    try:
        driver = runtime.driverGetVersion()
    except Exception as exc:
        return False, f"no NVIDIA driver: CuPy cannot load libcuda ({type(exc).__name__}: {exc})"
    if driver == 0:
        return False, "no NVIDIA driver is installed (the CUDA driver version is 0)"
    try:
        devices = runtime.getDeviceCount()
    except Exception as exc:  # cudaErrorNoDevice, cudaErrorInsufficientDriver, ...
        return False, f"no usable CUDA device ({type(exc).__name__}: {exc})"
    if devices == 0:
        return False, "no CUDA device: the NVIDIA driver sees none"
    try:
        nvrtc = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
    except Exception as exc:
        return False, f"NVRTC is missing: CuPy cannot load it ({type(exc).__name__}: {exc}); " + (
            _INSTALL_HINT
        )
    try:
        module = cupy.RawModule(code=_PROBE_SOURCE, options=COMPILE_OPTIONS)
        module.get_function("gpuflat_probe")
    except Exception as exc:
        return False, (
            f"CuPy cannot compile a kernel with NVRTC {nvrtc} ({type(exc).__name__}: "
            f"{str(exc).strip()[:500]}); {_INSTALL_HINT}"
        )
    return True, (
        f"CUDA available: {devices} device(s), driver {driver // 1000}.{driver % 1000 // 10}, "
        f"NVRTC {nvrtc}, CuPy {cupy.__version__}"
    )


_READ = object()


class KernelLoader:
    """The process's CUDA kernels, per device: each kernel from the first way of
    ``kernel_plan`` that works (the prebuilt fatbin of its source file, or NVRTC compiling
    that kernel alone), kept for the life of the process.

    Parameters
    ----------
    cupy : module
        CuPy (tests pass a fake).
    manifest : dict or None, optional
        The prebuilt kernels' manifest (default: ``kernels/prebuilt.json``; None: none).
    """

    def __init__(self, cupy, manifest=_READ):
        self._cp = cupy
        self.manifest = prebuilt_manifest() if manifest is _READ else manifest
        self._plans: dict[int, tuple[tuple[str, str], ...]] = {}
        self._modules: dict[tuple[int, str], object] = {}  # fatbin modules
        self._functions: dict[tuple[int, str, str], object] = {}
        #: (device, source, kernel) -> "fatbin" or "nvrtc": where each kernel came from
        self.ways: dict[tuple[int, str, str], str] = {}
        self._said: set = set()

    def plan(self, device: int | None = None) -> tuple[tuple[str, str], ...]:
        """The ways this device gets its kernels, in order (see ``kernel_plan``)."""
        cuda = self._cp.cuda
        device = cuda.Device().id if device is None else device
        plan = self._plans.get(device)
        if plan is None:
            cc = cuda.Device(device).compute_capability
            plan = kernel_plan(cc, cuda.runtime.driverGetVersion(), self.manifest)
            self._plans[device] = plan
        return plan

    def function(self, source: str, name: str):
        """Kernel ``name`` of ``kernels/<source>`` on the current device."""
        device = self._cp.cuda.Device().id
        key = (device, source, name)
        fn = self._functions.get(key)
        if fn is not None:
            return fn
        failed = []
        for way, why in self.plan(device):
            try:
                if way == "fatbin":
                    fn = self._from_fatbin(device, source, name)
                else:
                    fn = self._from_nvrtc(device, source, name, why)
            except Exception as exc:
                failed.append((way, exc))
                self._say(("failed", device, source, way), logging.WARNING,
                          "CUDA kernels of %s from %s failed on device %d (%s: %s)", source, way,
                          device, type(exc).__name__, str(exc).strip()[:300])  # fmt: skip
                continue
            self._functions[key] = fn
            self.ways[key] = way
            return fn
        reasons = "; ".join(f"{w}: {type(e).__name__}: {str(e).strip()[:500]}" for w, e in failed)
        raise RuntimeError(
            f"CUDA kernel {name} ({source}) could not be loaded on device {device}: {reasons}"
        ) from (failed[-1][1] if failed else None)

    def _from_fatbin(self, device: int, source: str, name: str):
        module = self._modules.get((device, source))
        if module is None:
            why = stale_reason(source, self.manifest)
            if why is not None:
                raise RuntimeError(why)
            module = self._cp.RawModule(path=str(kernel_file(fatbin_name(source))))
            self._modules[(device, source)] = module
        fn = module.get_function(name)  # the driver loads the module at its first use
        self._say(("fatbin", device, source), logging.DEBUG,
                  "CUDA kernels of %s on device %d: prebuilt (kernels/%s)", source, device,
                  fatbin_name(source))  # fmt: skip
        return fn

    def _from_nvrtc(self, device: int, source: str, name: str, why: str):
        self._say(("nvrtc", device), logging.INFO,
                  "CUDA kernels on device %d: %s (~1-2 s each at its first use, then from "
                  "CuPy's cache, %s)", device, why, cupy_cache_dir())  # fmt: skip
        module = self._cp.RawModule(code=nvrtc_source(source, name), options=COMPILE_OPTIONS)
        return module.get_function(name)

    def _say(self, key, level, msg, *args):
        if key not in self._said:
            self._said.add(key)
            log.log(level, msg, *args)


@functools.cache
def kernel_loader() -> KernelLoader:
    """The process's :class:`KernelLoader` (every device object shares it)."""
    import cupy

    return KernelLoader(cupy)


def cupy_cache_dir() -> Path:
    """Where CuPy keeps the binaries NVRTC compiled: ``$CUPY_CACHE_DIR``, else
    ``~/.cupy/kernel_cache`` (CuPy's own rule, cupy/cuda/compiler.py)."""
    return Path(os.environ.get("CUPY_CACHE_DIR") or Path.home() / ".cupy" / "kernel_cache")


def cuda_cache_info(compute_capability=None, driver: int | None = None) -> dict:
    """Where this process's CUDA kernels would come from, and where compiled ones are kept
    (for ``gpuflat info``). Needs no GPU.

    Parameters
    ----------
    compute_capability : str, optional
        Answer for this GPU ("89", "sm_89") instead of the current device's.
    driver : int, optional
        ... and this CUDA driver version (13000); by default the installed driver's, or,
        without one, the driver the prebuilt kernels need.

    Returns
    -------
    dict
        ``cupy_cache_dir`` (and ``cupy_cache_dir_from``: "CUPY_CACHE_DIR" or "default",
        ``cupy_cache_in_memory``, ``cupy_cache_files``, ``cupy_cache_bytes``),
        ``driver_jit_cache_dir`` (where the driver keeps what it compiles from PTX),
        ``prebuilt`` (the manifest's nvcc, sass, ptx, minimum drivers, and per source
        file its fatbin, size and whether it is current), ``device`` (None, or its name,
        compute capability and driver), ``covers_device`` (the fatbins hold machine code for
        it: True/False; None when there is no device to answer for), ``kernels_from``
        ("fatbin" or "nvrtc", the first way of ``kernel_plan``) and ``reason``.
    """
    cache = cupy_cache_dir()
    files = [f for f in cache.rglob("*") if f.is_file()] if cache.is_dir() else []
    jit = os.environ.get("CUDA_CACHE_PATH") or str(Path.home() / ".nv" / "ComputeCache")
    manifest = prebuilt_manifest()
    info: dict = {
        "cupy_cache_dir": str(cache),
        "cupy_cache_dir_from": "CUPY_CACHE_DIR" if os.environ.get("CUPY_CACHE_DIR") else "default",
        "cupy_cache_in_memory": os.environ.get("CUPY_CACHE_IN_MEMORY", "0") not in ("", "0"),
        "cupy_cache_files": len(files),
        "cupy_cache_bytes": sum(f.stat().st_size for f in files),
        "driver_jit_cache_dir": jit,
        "prebuilt": None,
        "device": None,
        "covers_device": None,
        "kernels_from": None,
        "reason": "",
    }
    if manifest is not None:
        info["prebuilt"] = {
            "folder": str(kernel_file(MANIFEST).parent),
            "nvcc": manifest["nvcc"],
            "sass": list(manifest["sass"]),
            "ptx": manifest["ptx"],
            "min_driver_sass": manifest["min_driver_sass"],
            "min_driver_ptx": manifest["min_driver_ptx"],
            "files": {
                source: {
                    "fatbin": entry["fatbin"],
                    "bytes": entry["bytes"],
                    "current": stale_reason(source, manifest) is None,
                }
                for source, entry in manifest["files"].items()
            },
        }
    cc = compute_capability
    if cc is None:
        cc, found, why = _current_device()
        if found is None:
            info["reason"] = f"no CUDA device to answer for ({why})"
            return info
        info["device"] = found
        driver = found["driver"] if driver is None else driver
    if driver is None:
        driver = _installed_driver()
    if driver is None:
        driver = manifest["min_driver_ptx"] if manifest else 0
    plan = kernel_plan(cc, driver, manifest)
    info["covers_device"] = sass_for(cc, manifest) is not None
    info["kernels_from"], info["reason"] = plan[0]
    return info


def _current_device():
    """(compute capability, {name, compute_capability, driver}, None) of the current CUDA
    device, or (None, None, why not)."""
    try:
        import cupy

        runtime = cupy.cuda.runtime
        if runtime.getDeviceCount() == 0:
            return None, None, "the NVIDIA driver sees no device"
        dev = cupy.cuda.Device()
        name = runtime.getDeviceProperties(dev.id)["name"]
        cc = dev.compute_capability
        found = {
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "compute_capability": cc,
            "driver": runtime.driverGetVersion(),
        }
    except Exception as exc:  # no CuPy, no driver, no device
        return None, None, f"{type(exc).__name__}: {str(exc).strip()[:200]}"
    return cc, found, None


def _installed_driver() -> int | None:
    try:
        import cupy

        return int(cupy.cuda.runtime.driverGetVersion()) or None
    except Exception:
        return None


def warmup_cuda(progress=None) -> dict:
    """Load or compile every kernel a run can use on the current device, so that later runs
    (other processes too) find them: from the prebuilt fatbins that takes milliseconds and
    leaves no file; through NVRTC it fills CuPy's cache (``cupy_cache_dir()``). Without a
    usable CUDA backend it does nothing and says why.

    Parameters
    ----------
    progress : callable, optional
        Called as ``progress(done, total, kernel)`` after each kernel.

    Returns
    -------
    dict
        ``ok``; ``reason`` (why not, or how the kernels come: ``kernel_plan``'s first
        reason); ``device`` (its id and compute capability); ``kernels`` (how many were
        had); ``ways`` ({"fatbin": k, "nvrtc": m}: where they came from); ``seconds``.
        A kernel that no way gives stops it: ``ok`` False, ``reason`` says why.
    """
    ok, why = available()
    if not ok:
        return {"ok": False, "reason": why, "device": None, "kernels": 0, "ways": {},
                "seconds": 0.0}  # fmt: skip
    import cupy

    loader = kernel_loader()
    dev = cupy.cuda.Device()
    device = {"id": dev.id, "compute_capability": dev.compute_capability}
    todo = [(source, name) for source in KERNEL_FILES for name in kernel_names(source)]
    ways: dict[str, int] = {}
    t0 = time.perf_counter()
    for i, (source, name) in enumerate(todo, 1):
        try:
            loader.function(source, name)
        except Exception as exc:  # every way failed: KernelLoader says each one's reason
            return {"ok": False, "reason": str(exc), "device": device, "kernels": i - 1,
                    "ways": ways, "seconds": time.perf_counter() - t0}  # fmt: skip
        way = loader.ways[(dev.id, source, name)]
        ways[way] = ways.get(way, 0) + 1
        if progress is not None:
            progress(i, len(todo), name)
    return {
        "ok": True,
        "reason": loader.plan(dev.id)[0][1],
        "device": device,
        "kernels": len(todo),
        "ways": ways,
        "seconds": time.perf_counter() - t0,
    }


class CupyDevice:
    """Device operations on CuPy: allocation, async copies, launches, synchronisation.

    Every method that takes a ``stream`` only queues work on it.
    """

    def __init__(self):
        import cupy

        self._cp = cupy
        self.kernels = kernel_loader()

    def _function(self, source: str, name: str):
        return self.kernels.function(source, name)

    def stream(self):
        return self._cp.cuda.Stream(non_blocking=True)

    def pinned(self, shape, dtype) -> np.ndarray:
        import cupyx

        return cupyx.empty_pinned(shape, dtype)

    def empty(self, shape, dtype):
        return self._cp.empty(shape, dtype)

    def zeros(self, shape, dtype, stream):
        out = self._cp.empty(shape, dtype)
        out.data.memset_async(0, out.nbytes, stream)
        return out

    def upload(self, dst, src: np.ndarray, stream) -> None:
        dst.set(src, stream=stream)

    def download(self, dst: np.ndarray, src, stream) -> None:
        src.get(stream=stream, out=dst, blocking=False)

    def launch(self, source: str, name: str, grid: int, block: int, args, stream) -> None:
        null = np.uint64(0)
        args = tuple(null if a is None else a for a in args)
        with stream:
            self._function(source, name)((grid,), (block,), args)

    def synchronize(self, stream) -> None:
        stream.synchronize()

    def free_memory(self) -> int:
        """Bytes of device memory free for new buffers: the driver's free memory plus what
        CuPy's pool holds unused."""
        free, _total = self._cp.cuda.runtime.memGetInfo()
        return int(free) + int(self._cp.get_default_memory_pool().free_bytes())


def device_info() -> dict:
    """Name, memory and versions of the current CUDA device (needs CuPy and a GPU)."""
    import cupy

    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    attrs = dev.attributes
    name = props["name"]
    clock_khz = attrs.get("MemoryClockRate", 0)
    bus_bits = attrs.get("GlobalMemoryBusWidth", 0)
    return {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "compute_capability": dev.compute_capability,
        "memory_bytes": int(props["totalGlobalMem"]),
        "peak_bandwidth_gb_s": 2.0 * clock_khz * 1e3 * bus_bits / 8 / 1e9,
        "cupy_version": cupy.__version__,
        "cuda_runtime_version": cupy.cuda.runtime.runtimeGetVersion(),
        "cuda_driver_version": cupy.cuda.runtime.driverGetVersion(),
    }


class _Slot:
    """One chunk in flight: its stream, pinned staging buffers and device buffers."""

    def __init__(self, dev, n: int, width: int, has_mask: bool, scratch_bytes: int, fast=False,
                 status=False):  # fmt: skip
        self.stream = dev.stream()
        # every sample's status (the grow's first combination)
        self.h_status = dev.pinned((n, width), np.uint8) if status else None
        self.d_status = dev.empty((n, width), np.uint8) if status else None
        self.h_data = dev.pinned((n, width), np.float32)
        self.h_mask = dev.pinned((n, width), np.uint8) if has_mask else None
        self.h_image = dev.pinned(width, np.float64)
        self.h_uncert = dev.pinned(width, np.float64)
        self.h_count = dev.pinned(width, np.int32)
        self.d_data = dev.empty((n, width), np.float32)
        self.d_mask = dev.empty((n, width), np.uint8) if has_mask else None
        self.d_image = dev.empty(width, np.float64)
        self.d_uncert = dev.empty(width, np.float64)
        self.d_count = dev.empty(width, np.int32)
        self.d_scratch = dev.empty(scratch_bytes, np.uint8) if scratch_bytes else None
        # the fast kernels' lists (``_cuda_fast``), and those a queued chunk uses
        self.d_list = dev.empty(width, np.uint32) if fast else None
        self.d_counts = dev.empty(2, np.uint32) if fast else None
        self.h_counts0 = dev.pinned(2, np.uint32) if fast else None
        if fast:
            self.h_counts0[...] = 0
        self.d_lists = None
        self.pending: tuple[int, int] | None = None  # pixel range queued on this slot


class CudaBackend:
    """Frame levels and band combination on a CUDA device (see docs/kernel-contract.md).

    Parameters
    ----------
    device : object, optional
        The device operations (default: :class:`CupyDevice`); tests pass a fake.
    chunk_pixels : int, optional
        Pixels per chunk; by default about ``CHUNK_BYTES`` of input per chunk.
    """

    name = "cuda"
    block = BLOCK
    #: the pipeline may hand stored FITS bytes to :meth:`open_feed` (converted on the device)
    accepts_raw = True

    def __init__(self, device=None, *, chunk_pixels: int | None = None):
        self.device = CupyDevice() if device is None else device
        self.chunk_pixels = chunk_pixels

    # -- the host path (gpuflat/backends/_feed.py) ------------------------------------------

    def open_feed(self, formats, shape, *, rows, masked, pass1, hows=("median",),
                  device_mem_limit=None):  # fmt: skip
        """The host path of one combination: slots made once, stored bytes converted on
        the device, levels measured there, the stack kept there when it fits
        ``device_mem_limit`` (bytes; None: half the free device memory). A context manager
        (see :class:`gpuflat.backends._feed.Feed`)."""
        from ._feed import Feed

        return Feed(self, formats, shape, rows=rows, masked=masked, pass1=pass1, hows=hows,
                    device_mem_limit=device_mem_limit)  # fmt: skip

    def device_budget(self, limit=None) -> float:
        """Bytes of device memory one combination may use."""
        if limit is not None:
            return float(limit)
        from ._feed import DEFAULT_DEVICE_SHARE

        return DEFAULT_DEVICE_SHARE * self.device.free_memory()

    def launch_convert(self, d_raw, d_out, count, fmt, stream) -> None:
        """Queue ``convert.cu`` on ``count`` stored values (``fmt``: a RawFormat)."""
        _launch_convert(self.device, d_raw, d_out, count, tuple(fmt), stream)

    # -- pass 1 ---------------------------------------------------------------------------

    def frame_level(
        self, frame: np.ndarray, mask: np.ndarray | None, how: str, busy_cores: int = 0
    ) -> float:
        """The median or mean of the finite, unmasked values of one frame (NaN if none).
        ``busy_cores`` (the host's cores busy elsewhere) does not concern the device."""
        dev = self.device
        stream = dev.stream()
        frame = np.ascontiguousarray(frame, np.float32)
        rows, cols = frame.shape
        d_frame = dev.empty(frame.shape, np.float32)
        dev.upload(d_frame, frame, stream)
        d_mask = None
        if mask is not None:
            d_mask = dev.empty(frame.shape, np.uint8)
            dev.upload(d_mask, np.ascontiguousarray(mask, np.uint8), stream)
        if how == "mean":
            d_sums = dev.empty(rows, np.float64)
            d_counts = dev.empty(rows, np.int64)
            args = (d_frame, d_mask, np.int64(rows), np.int64(cols), d_sums, d_counts)
            dev.launch("level.cu", "gpuflat_level_rowsum", _blocks(rows), BLOCK, args, stream)
            sums = dev.pinned(rows, np.float64)
            counts = dev.pinned(rows, np.int64)
            dev.download(sums, d_sums, stream)
            dev.download(counts, d_counts, stream)
            dev.synchronize(stream)
            k = int(counts.sum())
            total = float(np.cumsum(sums)[-1]) if rows else 0.0  # row order, as numba
            return total / k if k else float("nan")
        if how != "median":
            raise ValueError(f"how must be 'median' or 'mean', not {how!r}")
        npix = np.int64(rows * cols)
        d_state = dev.zeros(8, np.uint32, stream)
        d_hist = dev.zeros(2 * LEVEL_COPIES * 256, np.uint32, stream)
        d_tot = dev.empty(512, np.uint32)
        for launch in median_launches(d_frame, d_mask, int(npix), d_state, d_hist, d_tot):
            dev.launch(*launch, stream)
        state = dev.pinned(8, np.uint32)
        dev.download(state, d_state, stream)
        dev.synchronize(stream)
        return median_from_state(state)

    # -- pass 2 ---------------------------------------------------------------------------

    def combine_band(
        self,
        data: np.ndarray,
        mask: np.ndarray | None,
        scale: np.ndarray,
        weight: np.ndarray | None,
        params: KernelParams,
        out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        rejected: np.ndarray | None = None,
        busy_cores: int = 0,
        status: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reject and combine one band ``data[n, npix]``; returns (image, uncert, count),
        written into ``out`` when given; per-frame rejected samples are added to
        ``rejected`` (int64 [n]) when given; every sample's status is written into
        ``status`` (uint8 [n, npix]) when given (the general kernel with statuses,
        ``gpuflat_combine_s*``). ``busy_cores`` (host cores busy elsewhere) does not
        concern the device."""
        dev = self.device
        n, npix = data.shape
        if out is None:
            out = (np.empty(npix, np.float64), np.empty(npix, np.float64), np.empty(npix, np.int32))
        image, uncert, count = out
        if npix == 0:
            return image, uncert, count
        given = KernelParams(*params)
        kernel = combine_kernel(n, extended=extended(given), status=status is not None)
        per_pixel = n * (5 if mask is not None else 4) + (n if status is not None else 0)
        width = self.chunk_pixels or max(BLOCK, CHUNK_BYTES // per_pixel // BLOCK * BLOCK)
        width = min(width, npix)
        scratch = 9 * n * width if kernel[-1] == "n" else 0
        fast = status is None and fast_kernel(n, given) is not None
        slots = [_Slot(dev, n, width, mask is not None, scratch, fast, status is not None)
                 for _ in range(2)]  # fmt: skip
        # per-frame vectors, uploaded once; every slot's stream reads them, hence the wait
        d_scale = dev.empty(n, np.float64)
        dev.upload(d_scale, np.ascontiguousarray(scale, np.float64), slots[0].stream)
        d_weight = None
        if weight is not None:
            d_weight = dev.empty(n, np.float64)
            dev.upload(d_weight, np.ascontiguousarray(weight, np.float64), slots[0].stream)
        # per-slot rejection counters (the slots' kernels may run at the same time)
        d_rejected = [
            None if rejected is None else dev.zeros(n, np.uint64, s.stream) for s in slots
        ]
        dev.synchronize(slots[0].stream)
        p = KernelParams(*params)
        noise = noise_table(p, n)
        d_noise = None
        if noise.size:  # ccdclip's per-frame noise model, uploaded once like the scales
            d_noise = dev.empty(noise.size, np.float64)
            dev.upload(d_noise, noise, slots[0].stream)
            dev.synchronize(slots[0].stream)
        outputs = (image, uncert, count)
        for c, p0 in enumerate(range(0, npix, width)):
            slot = slots[c % 2]
            if slot.pending is not None:  # the slot's previous chunk must be done
                dev.synchronize(slot.stream)
                _drain(slot, outputs, status)
            p1 = min(npix, p0 + width)
            w = p1 - p0
            # stage in pinned memory; the chunk is a [n, w] array with row stride w
            h_data = slot.h_data.reshape(-1)[: n * w].reshape(n, w)
            h_data[...] = data[:, p0:p1]
            d_data = slot.d_data.reshape(-1)[: n * w].reshape(n, w)
            dev.upload(d_data, h_data, slot.stream)
            d_mask = None
            if mask is not None:
                h_mask = slot.h_mask.reshape(-1)[: n * w].reshape(n, w)
                h_mask[...] = mask[:, p0:p1]
                d_mask = slot.d_mask.reshape(-1)[: n * w].reshape(n, w)
                dev.upload(d_mask, h_mask, slot.stream)
            chunk = (d_data, d_mask, w, slot.d_image, slot.d_uncert, slot.d_count)
            if fast:  # the lists start empty
                dev.upload(slot.d_counts, slot.h_counts0, slot.stream)
            d_status = None
            if status is not None:
                d_status = slot.d_status.reshape(-1)[: n * w].reshape(n, w)
            slot.d_lists = queue_combine(
                dev, slot.stream, [chunk], n=n, stride=w, scale=d_scale, weight=d_weight,
                params=p, noise=d_noise, scratch=slot.d_scratch, rejected=d_rejected[c % 2],
                d_list=slot.d_list, d_counts=slot.d_counts, d_status=d_status,
            )  # fmt: skip
            if status is not None:
                h_status = slot.h_status.reshape(-1)[: n * w].reshape(n, w)
                dev.download(h_status, d_status, slot.stream)
            dev.download(slot.h_image[:w], slot.d_image[:w], slot.stream)
            dev.download(slot.h_uncert[:w], slot.d_uncert[:w], slot.stream)
            dev.download(slot.h_count[:w], slot.d_count[:w], slot.stream)
            slot.pending = (p0, p1)
        for slot in slots:
            if slot.pending is not None:
                dev.synchronize(slot.stream)
                _drain(slot, outputs, status)
        if rejected is not None:  # every slot's stream is done with its counters
            for slot, d in zip(slots, d_rejected, strict=True):
                h = dev.pinned(n, np.uint64)
                dev.download(h, d, slot.stream)
                dev.synchronize(slot.stream)
                rejected += h.astype(np.int64)
        return image, uncert, count

    def convert(self, raw: np.ndarray, bitpix: int, bscale, bzero, blank=None) -> np.ndarray:
        """Raw big-endian FITS data bytes -> float32 values, as ``_frames.scale_raw`` gives
        them (BITPIX 8: unsigned bytes)."""
        dtype = BITPIX_DTYPES[bitpix]
        dev = self.device
        stream = dev.stream()
        raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
        count = raw.size // dtype.itemsize
        d_raw = dev.empty(raw.size, np.uint8)
        d_out = dev.empty(count, np.float32)
        try:
            dev.upload(d_raw, raw, stream)
            _launch_convert(dev, d_raw, d_out, count, (dtype, bscale, bzero, blank), stream)
            out = dev.pinned(count, np.float32)
            dev.download(out, d_out, stream)
        finally:
            dev.synchronize(stream)
        return np.array(out)


def _launch_convert(dev, d_raw, d_out, count: int, fmt, stream) -> None:
    """Queue the conversion of ``count`` stored values (``fmt``: dtype, bscale, bzero,
    blank) from device bytes ``d_raw`` into device float32 ``d_out``."""
    kernel, mode, s, z, has_blank, value = convert_args(*fmt)
    args = (
        d_raw, np.int64(count), np.int32(mode), np.float64(s), np.float64(z),
        np.int32(has_blank), np.int64(value), d_out,
    )  # fmt: skip
    dev.launch("convert.cu", kernel, _blocks(count), BLOCK, args, stream)


def _drain(slot: _Slot, outputs, status=None) -> None:
    """Copy a finished chunk from the slot's pinned buffers into the band's outputs (and
    its statuses into ``status``, when given)."""
    p0, p1 = slot.pending
    w = p1 - p0
    for out, h in zip(outputs, (slot.h_image, slot.h_uncert, slot.h_count), strict=True):
        out[p0:p1] = h[:w]
    if status is not None:
        status[:, p0:p1] = slot.h_status.reshape(-1)[: status.shape[0] * w].reshape(-1, w)
    slot.pending = None


def _blocks(threads: int) -> int:
    return max(1, (threads + BLOCK - 1) // BLOCK)
