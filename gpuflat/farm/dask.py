"""Run the work units of a batch run (:mod:`gpuflat.farm.units`) on a dask.distributed
cluster; imports the units only, never the command line.

``--workers N`` starts a local cluster (N worker processes, ``--threads-per-worker`` threads
each, 1 by default); ``--scheduler ADDRESS`` uses an existing one, whose workers must see
the same files (a shared filesystem) and have gpuflat installed. Without these flags this
module is never imported, nor is Dask.

A work unit is one product: it opens its own files, combines, and writes its product atomically
(``write_product``: temporary name, verified, linked into place, never clobbering), then
returns its small report entry, the same one the in-process loop records. Units are
independent and idempotent, so a unit whose worker died is simply run again elsewhere:
the scheduler reassigns the tasks of a lost worker (up to ``distributed.scheduler.
allowed-failures`` times) and ``retries`` re-runs a unit that raised unexpectedly. A unit
that fails for good is listed in the report as failed, and the exit code is 1.

A mosaic group scaled per extension is split further: one task per extension combines it
(on any worker) and the group's unit, which depends on them, writes the product from their
results, so the extensions of one group run in parallel too. With ``--scale-per exposure``
the extensions share the exposures' levels, and the group stays one unit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path

from ..errors import BackendUnavailableError, GpuflatError
from . import units
from .options import OptionError

log = logging.getLogger("gpuflat")

#: re-runs of a unit that raised an unexpected exception (worker deaths are counted by
#: the scheduler's own ``allowed-failures``)
RETRIES = 2
#: seconds to wait for an existing scheduler to answer
CONNECT_TIMEOUT = 20

_INSTALL = "pip install 'gpuflat[distributed]'"


def require(options) -> None:
    """Check that dask.distributed is importable, before any work."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        flag = "--scheduler" if options.scheduler else "--workers"
        raise OptionError(
            f"{flag} needs dask.distributed, which is not installed ({_INSTALL})"
        ) from None


def run_units(options, work, on_done) -> list[dict]:
    """Run the units of ``work`` ((group, target) pairs) on the cluster; returns their
    report entries in that order. ``on_done(entry)`` is called as each one completes."""
    from distributed import as_completed

    paths = {k: os.path.abspath(getattr(options, k)) for k in ("mask", "bias", "dark")
             if getattr(options, k)}  # fmt: skip
    if paths:  # a worker may run elsewhere than the client
        options = dataclasses.replace(options, **paths)
    entries: list[dict | None] = [None] * len(work)
    with _client(options) as client:
        futures = {}
        for i, (group, target) in enumerate(work):
            group, target = _portable_unit(group, target)
            tag = f"{i}-{uuid.uuid4().hex}"
            split = _extensions_to_split(options, group, target)
            if split:
                specs, only = split
                parts = []
                for j, spec in enumerate(specs):
                    part = client.submit(
                        _remote_extension, options, group, spec, only,
                        key=f"gpuflat-ext-{tag}-{j}", pure=False, retries=RETRIES,
                    )  # fmt: skip
                    parts.append(part)
                future = client.submit(
                    _remote_mosaic, options, group, target, *parts,
                    key=f"gpuflat-unit-{tag}", pure=False, retries=RETRIES,
                )  # fmt: skip
            else:
                future = client.submit(
                    _remote_unit, options, group, target,
                    key=f"gpuflat-unit-{tag}", pure=False, retries=RETRIES,
                )  # fmt: skip
            futures[future] = (i, group, target, target.exists())
        for done, future in enumerate(as_completed(futures, loop=client.loop), start=1):
            i, group, target, existed = futures.pop(future)
            try:
                entry = future.result()
                if entry["status"].startswith("skipped") and not existed:
                    # the unit ran twice: its first worker wrote the product and was lost
                    # before the result came back (the retry found the product in place)
                    entry["status"] = "written"
                    entry["note"] = "written by an earlier attempt whose worker was lost"
            except (Exception, asyncio.CancelledError) as exc:
                entry = {
                    "group": group.label(),
                    "product": str(target),
                    "files": [str(f.path) for f in group.frames],
                    "status": f"failed: {type(exc).__name__}: {exc}",
                }
            future.release()  # done: a later worker loss must not run it again
            entries[i] = entry
            for frame in entry.get("frames", ()):  # the workers' QA warnings, said here
                if frame.get("qa", "kept").startswith("left out: "):
                    why = frame["qa"].removeprefix("left out: ")
                    log.warning("%s: left out of group %s: %s", frame["file"], group.label(), why)
            log.info("[%d/%d] group %s: %s", done, len(work), entry["group"], entry["status"])
            on_done(entry)
    return entries


def _remote_unit(options, group, target):
    """The task run on a worker: one unit, as in-process (backend and mask resolved here)."""
    return units.group_unit(options, group, Path(target), _on_worker(options))


def _extensions_to_split(options, group, target):
    """For a mosaic group whose extensions run as tasks of their own: ((EXTNAME, EXTVER) of
    each, the names of the files to combine), decided here once for all of them (--skip-bad
    warnings are said here); None when the group stays one unit."""
    if not group.mosaic or options.scale_per != "extension":
        return None
    if target.exists() and not options.overwrite:
        return None  # the plain unit reports it as skipped
    from .._extensions import match_extensions

    specs = options.ext_specs
    try:
        infos = units.mosaic_files(options, group, specs)
        plan = match_extensions([infos[0].path], [infos[0].extensions], specs)
    except (GpuflatError, ValueError):
        return None  # the plain unit reports the error
    if len(plan) < 2:
        return None
    return [key for key, _, _ in plan], {str(i.path) for i in infos}


def _remote_extension(options, group, spec, only):
    """A task run on a worker: one extension of a mosaic group, combined (not written).
    An expected error comes back as the result (retrying would not help); the group's
    unit reports it."""
    backend = _on_worker(options)
    if backend is None:
        name = options.combine.backend
        return BackendUnavailableError(f"backend {name!r} cannot run on this worker")
    try:
        return units.mosaic_result(options, group, backend, specs=[spec], only=only)
    except (GpuflatError, ValueError, OSError) as exc:
        return exc


def _remote_mosaic(options, group, target, *parts):
    """The task run on a worker when a mosaic group's extensions are done: its product."""
    return units.mosaic_unit(options, group, _on_worker(options), Path(target), parts)


def _on_worker(options):
    """What every task starts with on a worker: errors only in the log (the client
    reports the rest), and the worker's backend."""
    log.setLevel(logging.ERROR)
    return _worker_backend(options.combine.backend)


_BACKENDS: dict = {}


def _worker_backend(name):
    """The worker's backend, chosen once per worker process (None: let the unit fail with
    the reason)."""
    from ..backends import get_backend

    if name not in _BACKENDS:
        try:
            _BACKENDS[name] = get_backend(name)
        except GpuflatError:
            return None
    return _BACKENDS[name]


def _portable_unit(group, target):
    frames = [dataclasses.replace(f, path=Path(os.path.abspath(f.path))) for f in group.frames]
    return dataclasses.replace(group, frames=frames), Path(os.path.abspath(target))


@contextmanager
def _client(options):
    from distributed import Client

    level = logging.ERROR if options.quiet else logging.WARNING
    if options.scheduler:
        try:
            client = Client(options.scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise OptionError(f"--scheduler {options.scheduler}: cannot connect ({exc})") from None
        with client:
            log.info("scheduler %s: %d worker(s)", options.scheduler, _nworkers(client))
            yield client
        return
    with (
        _local_cluster(options, level) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        log.info(
            "local cluster: %d worker process(es), dashboard %s",
            _nworkers(client),
            cluster.dashboard_link,
        )
        yield client


def _nworkers(client) -> int:
    return len(client.scheduler_info().get("workers", {}))


def _local_cluster(options, level):
    threads = options.threads_per_worker
    if options.combine.backend == "cuda":
        cluster = _cuda_cluster(threads, level)
        if cluster is not None:  # pragma: no cover - needs GPUs and dask-cuda
            return cluster
    from distributed import LocalCluster

    env = {}
    if "NUMBA_NUM_THREADS" not in os.environ:
        # share the cores between the workers instead of each numba using them all
        cores = os.cpu_count() or 1
        env["NUMBA_NUM_THREADS"] = str(max(1, cores // (options.workers * threads)))
    return LocalCluster(
        n_workers=options.workers, threads_per_worker=threads, processes=True,
        dashboard_address=":0", silence_logs=level, env=env,
    )  # fmt: skip


def _cuda_cluster(threads, level):
    """GPU workers, one per visible GPU, when dask-cuda is installed (``--device cuda``).

    Untested here (no GPU on the development machines); the workers then choose their
    GPU through CUDA_VISIBLE_DEVICES, as dask-cuda sets it. Without dask-cuda, the plain
    local cluster is used and every worker shares the default GPU.
    """
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        log.info("dask-cuda is not installed: plain worker processes share the GPU")
        return None
    log.info("dask-cuda: one worker per visible GPU (--workers is ignored)")  # pragma: no cover
    return LocalCUDACluster(threads_per_worker=threads, silence_logs=level)  # pragma: no cover
