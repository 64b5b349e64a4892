"""Backends: one small protocol (``frame_level``, ``combine_band``), numba and CUDA siblings.

``frame_level(frame, mask, how, busy_cores=0)`` and ``combine_band(..., busy_cores=0)``
(and ``status=``: every sample's status, docs/kernel-contract.md step 8, for the grow):
``busy_cores`` says how many cores other work of the run keeps busy meanwhile (the
pipeline's reader, reading the next band; the run's writer); a CPU backend works on the
others (never fewer than one), a GPU backend ignores it. The results do not depend on it.

A backend may also measure frames from their stored bytes (``measures_raw(fmt)`` and
``raw_level(raw, fmt, mask, how)``, the numba backend for 8- and 16-bit integers): pass 1
of a banded combination then reads them without converting them.

A backend may also offer a host path (``accepts_raw = True`` and ``open_feed(...)``, see
docs/architecture.md, "The host path"): the pipeline then hands it the frames' stored bytes
and it converts, measures and combines them on its device. The CUDA backend does; the numba
backend does not (it gets float32 bands from the pipeline's reader)."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np

from ..errors import BackendUnavailableError

log = logging.getLogger("gpuflat")


class NumbaBackend:
    """The CPU backend (numba, parallel over pixels)."""

    name = "cpu"

    def frame_level(self, frame, mask, how, busy_cores=0):
        """``busy_cores``: cores busy with other work of the run (its product writer,
        finishing the previous group meanwhile), which the measurement leaves to it."""
        from . import _numba

        with _threads_left(busy_cores):
            return _numba.frame_level(frame, mask, how)

    def combine_band(
        self, data, mask, scale, weight, params, out=None, rejected=None, busy_cores=0,
        status=None,
    ):  # fmt: skip
        """``busy_cores``: as for :meth:`frame_level`. On two cores, a band combined on
        both while the reader converted the next one took the run longer than on one.
        ``status`` (uint8 [n, npix]): every sample's status is written there (contract step
        8), and the rejected counts are those of its statuses."""
        with _threads_left(busy_cores):
            if status is not None:
                from . import _numba_grow
                from ._params import REJECTED

                result = _numba_grow.combine_band_status(
                    data, mask, scale, weight, params, out, status
                )
                if rejected is not None:
                    rejected += np.count_nonzero(status == REJECTED, axis=1)
                return result
            from . import _numba

            return _numba.combine_band(data, mask, scale, weight, params, out, rejected)

    def measures_raw(self, fmt) -> bool:
        """Whether ``raw_level`` takes frames stored in ``fmt`` (``_frames.RawFormat``)."""
        from . import _numba_median

        return _numba_median.measures_raw(fmt)

    def raw_level(self, raw, fmt, mask, how, busy_cores=0):
        """``frame_level`` of a whole frame, from its stored bytes as they are in the file."""
        from . import _numba_median

        with _threads_left(busy_cores):
            return _numba_median.raw_level(raw, fmt, mask, how)


@contextmanager
def _threads_left(busy_cores: int):
    """numba's parallel regions started from this thread use ``busy_cores`` fewer threads
    (at least one) inside the ``with`` block. On two cores, a 2048^2 frame's median
    measured on both while the reader thread read the next frame (and a product's write
    went on beside) took 7-10 ms instead of 2.6 ms alone: the region waits for whichever
    of its threads the others have displaced."""
    if busy_cores <= 0:
        yield
        return
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(max(1, threads - busy_cores))
    try:
        yield
    finally:
        numba.set_num_threads(threads)


def cuda_status() -> tuple[bool, str]:
    """Whether the CUDA backend can run here, and why not."""
    try:
        from . import _cuda
    except ImportError as exc:  # pragma: no cover - the module ships with gpuflat
        return False, f"CUDA backend failed to import: {exc}"
    return _cuda.available()


#: one backend object per kind and device, for the life of the process (compiled CUDA
#: modules and loaded numba code are reused by every later combination)
_INSTANCES: dict = {}


def get_backend(name: str = "auto"):
    """The backend object for 'auto', 'cpu' or 'cuda' (the same object on every call for
    the same kind and device)."""
    if name == "cpu":
        return _instance(("cpu",), NumbaBackend)
    ok, why = cuda_status()
    if ok:
        import cupy

        from ._cuda import CudaBackend

        return _instance(("cuda", cupy.cuda.runtime.getDevice()), CudaBackend)
    if name == "cuda":
        raise BackendUnavailableError(f"backend 'cuda' cannot run here: {why}")
    log.info("using the CPU backend: %s", why)
    return _instance(("cpu",), NumbaBackend)


def _instance(key, make):
    if key not in _INSTANCES:
        _INSTANCES[key] = make()
    return _INSTANCES[key]
