"""The one write-verify-commit helper: every file gpuflat writes (products, plots, the
report, simulated frames) goes through :func:`commit`.

A file is written to a temporary name beside its target (``.NAME.tmp-HOST-PID-N``, N counting
this process's temporaries: two writes never share one, even of the same target), checked
when asked, made durable when asked (``fsync``), and only then moved into place: a killed
process never leaves a half-written file under the target's name, and an existing file is
never clobbered unless ``overwrite`` (``os.link`` fails if the target appeared meanwhile,
even between a caller's own existence check and the commit). A temporary that a killed
process of this host left behind is removed the next time the same target is written.
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"
_SERIAL = itertools.count(1)  # next() on it is atomic: threads never get the same number


def commit(
    path,
    write: Callable[[Path], None],
    *,
    overwrite: bool = False,
    durable: bool = False,
    verify: Callable[[Path], None] | None = None,
    defer: bool = False,
    tmp: Path | None = None,
):
    """``write(tmp)`` writes the file, ``verify(tmp)`` checks it (raises when it is not
    right), then fsync of the file and its directory (``durable``) and the move into place.
    Returns ``path``; with ``defer``, the file is written and verified now and a callable
    is returned that does the rest (fsync and move, or clean-up on failure) when called,
    e.g. on another thread, so that durability stays off the caller's critical path.
    ``tmp``: the temporary the caller writes (its own :func:`temporary_name`), else a new
    one."""
    path = Path(path)
    _remove_stale_temporaries(path)
    tmp = temporary_name(path) if tmp is None else Path(tmp)
    try:
        write(tmp)
        if verify is not None:
            verify(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

    def finish() -> Path:
        try:
            if durable:
                fsync(tmp)
            if overwrite:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # atomic and never clobbers: fails if path exists
                os.unlink(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if durable:  # the entry of the committed name itself, not only the temporary's
            fsync_dir(path.parent)
        return path

    return finish if defer else finish()


def temporary_name(path: Path) -> Path:
    """A new temporary name for ``path``: its name, this host and process, and a serial
    number, so that no two writes (two products, two threads) ever share a temporary."""
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{next(_SERIAL)}")


def fsync(path) -> None:
    """Flush a written file, and its directory entry, to the disk."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    fsync_dir(Path(path).parent)


def fsync_dir(folder) -> None:
    """Flush a folder's entries to the disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries of ``path`` that a killed process of this host left (its PID
    is gone). Those of other hosts (a cluster on a shared filesystem) stay: their PIDs
    cannot be checked from here."""
    prefix = f".{path.name}.tmp-{_HOST}-"
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = tmp.name[len(prefix) :].partition("-")[0]  # PID-N (or PID, of older versions)
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
