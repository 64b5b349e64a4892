"""What numba has compiled of the CPU backend's kernels, and where: its cache, the first
compile of a run, and the kernels a machine can have compiled ahead (``gpuflat warmup``).

numba compiles a kernel the first time it is called with a new combination of argument
types, and keeps the machine code in its cache (``NUMBA_CACHE_DIR``, else a
``__pycache__`` folder beside the package, else a per-user folder when that one is
read-only), keyed on the kernel's source and on the CPU's name and features: a new
machine, container or CPU model starts cold.
"""

from __future__ import annotations

import contextlib
import threading

#: The kernels the backend calls from Python (each compiles what it calls): their modules
#: and names. ``cache_state`` counts them.
ENTRY_POINTS = (
    ("_numba", "_fast_range"),
    ("_numba", "_combine_range"),
    ("_numba", "_row_sums"),
    ("_numba", "_median_hist_part"),
    ("_numba_grow", "_status_range"),  # grow
    ("_numba_median", "_bracket_part"),
    ("_numba_median", "_raw_hist_part"),
    ("_numba_ccdmask", "_medsub_pairs_rows"),  # gpuflat mask (7 x 7 medians)
    ("_numba_ccdmask", "_mask_rows"),
    ("_numba_ccdmask", "fill_short_gaps"),
)

#: About how long the first compile of one run's kernels takes on a 2-core machine: the
#: guide's parameters (the fast path and the frame median) 10 s; options that take the
#: per-pixel path as well (--clip pclip 17 s, --grow 30 s: their whole cold run) longer.
FIRST_RUN_SECONDS = "10-30"


def _dispatchers():
    from importlib import import_module

    for module, name in ENTRY_POINTS:
        yield name, getattr(import_module(f"gpuflat.backends.{module}"), name)


def cache_dir() -> str:
    """The folder where numba keeps the compiled kernels (as numba chooses it here)."""
    _, dispatcher = next(_dispatchers())
    return dispatcher._cache._cache_path


def cache_state() -> dict:
    """Which entry points have machine code in the cache for this CPU: ``{"dir",
    "cpu", "cached": [names], "missing": [names]}`` (an entry point counts as cached
    when at least one of its specialisations is; ``gpuflat warmup`` compiles all)."""
    import llvmlite.binding as llvm

    cached, missing = [], []
    for name, dispatcher in _dispatchers():
        try:
            magic = dispatcher.targetctx.codegen().magic_tuple()
            index = dispatcher._cache._cache_file._load_index()  # {} if the source changed
            hit = any(key[1] == magic for key in index)
        except Exception:  # another numba's internals: say nothing is cached
            hit = False
        (cached if hit else missing).append(name)
    return {"dir": cache_dir(), "cpu": llvm.get_host_cpu_name(), "cached": cached,
            "missing": missing}  # fmt: skip


@contextlib.contextmanager
def first_compile(callback):
    """Within the block, ``callback()`` is called once, from the thread that compiles,
    just before numba starts compiling one of gpuflat's kernels (one that its cache did
    not have for these argument types and this CPU)."""
    from numba.core import event

    lock = threading.Lock()
    said = False

    class Listener(event.Listener):
        def on_start(self, ev):
            nonlocal said
            func = getattr(ev.data.get("dispatcher"), "py_func", None)
            if not getattr(func, "__module__", "").startswith("gpuflat."):
                return
            with lock:
                if said:
                    return
                said = True
            callback()

        def on_end(self, ev):
            pass

    with event.install_listener("numba:compile", Listener()):
        yield


def compiles_in(block) -> list[str]:
    """The gpuflat kernels that numba compiled while ``block()`` ran (for tests and
    ``gpuflat warmup``'s check)."""
    from numba.core import event

    names = []

    class Listener(event.Listener):
        def on_start(self, ev):
            func = getattr(ev.data.get("dispatcher"), "py_func", None)
            if getattr(func, "__module__", "").startswith("gpuflat."):
                names.append(f"{func.__module__}.{func.__qualname__}")

        def on_end(self, ev):
            pass

    with event.install_listener("numba:compile", Listener()):
        block()
    return names
