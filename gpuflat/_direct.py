"""Products to and from the disk past the page cache (``O_DIRECT``), where the filesystem
allows it.

A product written the ordinary way lands in the page cache first, and the kernel needs
fresh pages for it: on this project's VMs pages that a process freed a second earlier are
handed back to the host, and touching them again costs 1-2 ms per MB. A 4096^2 product
(176 MB) took 0.37-0.41 s to write and 0.06 s to fsync; written straight from one reused
8 MB buffer with ``O_DIRECT`` it takes 0.07 s, durable already, and reading it back the
same way for verification reads what is on the disk, not the cache.

:class:`DirectWriter` is a write-only file-like object for astropy's ``HDUList.writeto``
(astropy still lays out the HDUs and checksums them); :func:`chunks` reads a file back.
Where ``O_DIRECT`` is refused (tmpfs before Linux 6.6, some network filesystems) both use
ordinary I/O, with the same results.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading

ALIGN = 4096  # O_DIRECT alignment of buffers, sizes and offsets (a page; >= any block size)
CHUNK = 8 << 20  # bytes per write or read (a multiple of ALIGN)
PIECE = CHUNK - 2 * ALIGN  # the most bytes of one piece staged for a PlacedWriter
_DIRECT = getattr(os, "O_DIRECT", 0)
_local = threading.local()


def _buffer() -> mmap.mmap:
    """This thread's page-aligned staging buffer (kept: the writer thread of a run reuses
    it product after product instead of faulting in fresh pages)."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = mmap.mmap(-1, CHUNK)
    return buf


def _open(path, flags: int) -> tuple[int, bool]:
    """(fd, direct): ``path`` opened with ``O_DIRECT`` where the filesystem takes it."""
    flags |= getattr(os, "O_BINARY", 0)  # Windows: no newline translation
    if _DIRECT:
        try:
            return os.open(path, flags | _DIRECT, 0o666), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o666), False


def _undirect(fd: int) -> None:
    import fcntl  # POSIX; reached only where O_DIRECT exists

    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_DIRECT)


class _Written:
    """A file being written (``self._fd``): a context manager whose exit closes it
    (``close``), or, on an error inside, discards it (:meth:`discard`)."""

    closed = False

    def discard(self) -> None:
        """Closed as it is: no padding, no truncation (the caller removes the file)."""
        if not self.closed:
            self.closed = True
            os.close(self._fd)

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        if kind is None:
            self.close()
        else:
            self.discard()


class DirectWriter(_Written):
    """A new file at ``path`` (truncated if it exists), written ``CHUNK`` bytes at a time
    from an aligned buffer; the last chunk is padded to ``ALIGN`` and the file truncated to
    what was written. A context manager: leaving it writes the rest and closes the file
    (an error inside leaves the file partly written, for the caller to remove)."""

    def __init__(self, path):
        self._fd, self._direct = _open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        self._buf = _buffer()
        self._view = memoryview(self._buf)
        self._fill = 0  # bytes in the buffer
        self._size = 0  # bytes written by the caller

    def write(self, data) -> int:
        src = memoryview(data).cast("B")
        done = 0
        while done < len(src):
            n = min(CHUNK - self._fill, len(src) - done)
            self._view[self._fill : self._fill + n] = src[done : done + n]
            self._fill += n
            done += n
            if self._fill == CHUNK:
                self._flush_buffer(CHUNK)
        self._size += done
        return done

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        """Nothing: a partial chunk waits for the next write or ``close`` (O_DIRECT writes
        whole aligned blocks)."""

    def _flush_buffer(self, nbytes: int) -> None:
        view = self._view[:nbytes]
        try:
            written = os.write(self._fd, view)
        except OSError as exc:
            if not (self._direct and exc.errno == errno.EINVAL):
                raise
            _undirect(self._fd)  # alignment refused after all: ordinary writes from here
            self._direct = False
            written = os.write(self._fd, view)
        while written < nbytes:  # a short write (a signal, a full pipe): the rest
            written += os.write(self._fd, view[written:])
        self._fill = 0

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self._fill:
                tail = self._fill
                if self._direct:
                    pad = -tail % ALIGN
                    self._view[tail : tail + pad] = bytes(pad)
                    tail += pad
                self._flush_buffer(tail)
            os.ftruncate(self._fd, self._size)  # the padding off
        finally:
            os.close(self._fd)


class PlacedWriter(_Written):
    """A new file of ``size`` bytes (truncated if it exists) written in pieces at any
    offsets and in any order, each byte at most once (those never given are zeros), past
    the page cache where the filesystem allows it: a streamed product's planes, band by
    band, and its headers last.

    :meth:`staging` lends memory for a piece (at the page offset its bytes have in the
    file, so that its whole pages go to the disk from where they are); :meth:`put` writes
    a piece from it. The bytes of a page that pieces share wait in memory until the page is
    complete; :meth:`close` writes the pages still waiting (zeros where nothing was given;
    the file is then truncated to ``size``). Where ``O_DIRECT`` is refused every piece is
    written as it comes. A context manager: an error inside leaves the file for the caller
    to remove."""

    def __init__(self, path, size: int):
        self._fd, self._direct = _open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        self.size = size
        self._waiting = {}  # page index -> (bytearray(ALIGN), bytes of it given so far)

    def staging(self, offset: int, nbytes: int) -> memoryview:
        """Memory for the ``nbytes`` bytes (at most ``PIECE``) to be written at ``offset``,
        valid until the next :meth:`put`."""
        if nbytes > PIECE:
            raise ValueError(f"a piece of {nbytes} bytes is more than {PIECE} (PIECE)")
        lead = offset % ALIGN
        return memoryview(_buffer())[lead : lead + nbytes]

    def put(self, offset: int, piece) -> None:
        """Write ``piece`` (bytes-like; whole pages are written from it directly when it is
        the :meth:`staging` memory for ``offset``) at ``offset``."""
        data = memoryview(piece).cast("B")
        end = offset + len(data)
        if offset < 0 or end > self.size:
            raise ValueError(f"bytes {offset}-{end} are outside a file of {self.size} bytes")
        if not self._direct:
            self._pwrite(data, offset)
            return
        first, last = -(-offset // ALIGN) * ALIGN, end // ALIGN * ALIGN  # whole pages
        if first >= last:  # within one page, or across one page boundary
            first = last = min(end, first)
        self._wait(offset, data[: first - offset])
        if last > first:
            self._whole(first, data[first - offset : last - offset])
        self._wait(last, data[last - offset :])

    def _wait(self, offset, data) -> None:
        """Part of one page: kept until the page is complete."""
        if not len(data):
            return
        if not self._direct:  # refused since the piece began
            self._pwrite(data, offset)
            return
        page, at = divmod(offset, ALIGN)
        buf, got = self._waiting.get(page, (None, 0))
        if buf is None:
            buf = bytearray(ALIGN)
        buf[at : at + len(data)] = data
        got += len(data)
        if got == min(ALIGN, self.size - page * ALIGN) and page * ALIGN + ALIGN <= self.size:
            self._waiting.pop(page, None)
            self._page(page, buf)
        else:
            self._waiting[page] = (buf, got)

    def _page(self, page, buf) -> None:
        """One page written from the staging buffer's last page (pieces never reach it)."""
        spare = memoryview(_buffer())[CHUNK - ALIGN :]
        spare[:] = buf
        self._whole(page * ALIGN, spare)

    def _whole(self, offset, view) -> None:
        if self._direct and _addr(view) % ALIGN:
            staging = memoryview(_buffer())
            for a in range(0, len(view), PIECE):  # not from the staging: through it
                part = view[a : a + PIECE]
                staging[: len(part)] = part
                self._pwrite(staging[: len(part)], offset + a)
            return
        self._pwrite(view, offset)

    def _pwrite(self, view, offset) -> None:
        written = 0
        while written < len(view):  # a short write: the rest (unaligned, maybe refused)
            try:
                written += os.pwrite(self._fd, view[written:], offset + written)
            except OSError as exc:
                if not (self._direct and exc.errno == errno.EINVAL):
                    raise
                self._undirect()

    def _undirect(self) -> None:
        """Alignment refused after all: ordinary writes from here, the waiting bytes too
        (the pages being filled hold zeros where nothing was given yet, and each byte is
        written once: given ones are written again with the same value)."""
        _undirect(self._fd)
        self._direct = False
        waiting, self._waiting = self._waiting, {}
        for page, (buf, _) in waiting.items():
            self._flush(page, buf)

    def _flush(self, page, buf) -> None:
        """A page that was not completed by pieces: the part up to the end of the file."""
        n = min(ALIGN, self.size - page * ALIGN)
        if self._direct:
            self._page(page, buf)
        else:
            self._pwrite(memoryview(buf)[:n], page * ALIGN)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            for page, (buf, _) in sorted(self._waiting.items()):
                self._flush(page, buf)
            self._waiting = {}
            os.ftruncate(self._fd, self.size)  # the last page's padding off
        finally:
            os.close(self._fd)


def _addr(view) -> int:
    """The address of ``view``'s first byte."""
    import numpy as np  # loaded already by whoever writes products

    return np.frombuffer(view, np.uint8).__array_interface__["data"][0]


def chunks(path):
    """Yield ``(offset, bytes)`` over the whole file at ``path``, ``CHUNK`` bytes at a time
    (a memoryview into one reused buffer, valid until the next step)."""
    fd, direct = _open(path, os.O_RDONLY)
    view = memoryview(_buffer())
    with open(fd, "rb", buffering=0) as raw:  # closes fd
        offset = 0
        while True:
            try:
                n = raw.readinto(view)
            except OSError as exc:
                if not (direct and exc.errno == errno.EINVAL):
                    raise
                _undirect(fd)  # a failed read moved nothing: the same read, ordinary
                direct = False
                continue
            if not n:
                return
            yield offset, view[:n]
            offset += n
