"""gpuflat._direct: files written and read past the page cache give exactly the bytes of
ordinary I/O, at every size and split, where O_DIRECT is taken and where it is refused."""

import errno
import itertools
import os
import warnings

import numpy as np
import pytest
from astropy.io import fits

from gpuflat import _direct
from gpuflat._direct import ALIGN, CHUNK, PIECE, DirectWriter, PlacedWriter, chunks

SIZES = [0, 1, 2879, ALIGN, ALIGN + 1, CHUNK - 1, CHUNK, CHUNK + 2880, 3 * CHUNK + 5 * 2880]


@pytest.fixture(params=["direct", "refused at open", "refused at write"])
def mode(request, monkeypatch):
    """O_DIRECT as the filesystem gives it; refused by ``open`` (EINVAL, as tmpfs did before
    Linux 6.6); taken by ``open`` but refused by the first write."""
    if request.param == "refused at open":
        real_open = os.open

        def no_direct(path, flags, *args):
            if flags & _direct._DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_open(path, flags, *args)

        monkeypatch.setattr(_direct.os, "open", no_direct)
    elif request.param == "refused at write":
        import fcntl

        def refusing(real):
            def refuse(fd, data, *offset):
                if fcntl.fcntl(fd, fcntl.F_GETFL) & _direct._DIRECT:
                    raise OSError(errno.EINVAL, "Invalid argument")
                return real(fd, data, *offset)

            return refuse

        monkeypatch.setattr(_direct.os, "write", refusing(os.write))
        monkeypatch.setattr(_direct.os, "pwrite", refusing(os.pwrite))
    return request.param


def _pieces(data: bytes, rng):
    """``data`` cut at random places, some pieces empty, some larger than a chunk."""
    cuts = np.sort(rng.integers(0, len(data) + 1, rng.integers(0, 12)))
    edges = [0, *cuts.tolist(), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@pytest.mark.parametrize("size", SIZES)
def test_written_bytes_are_the_bytes_given_and_read_back_whole(tmp_path, mode, size):
    rng = np.random.default_rng(size)
    data = rng.integers(0, 256, size, np.uint8).tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * (size + 10000))  # an existing longer file is replaced
    with DirectWriter(path) as out:
        for piece in _pieces(data, rng):
            assert out.write(piece) == len(piece)
        assert out.tell() == size
    assert path.read_bytes() == data
    got, at = b"", 0
    for offset, chunk in chunks(path):
        assert offset == at
        got += bytes(chunk)
        at += len(chunk)
    assert got == data


def test_a_2d_array_is_written_as_its_bytes(tmp_path, mode):
    """astropy hands over an HDU's data as the array's own buffer (2-D, typed)."""
    a = np.arange(3 * 2048 * 700, dtype=np.float32).reshape(-1, 2048)
    with DirectWriter(tmp_path / "a.bin") as out:
        out.write(b"head")
        out.write(a.data)
    assert (tmp_path / "a.bin").read_bytes() == b"head" + a.tobytes()


def test_the_file_is_opened_past_the_page_cache_where_the_filesystem_allows(tmp_path):
    if not _direct._DIRECT:
        pytest.skip("no O_DIRECT on this platform")
    try:
        fd = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | _direct._DIRECT)
    except OSError:
        pytest.skip("this filesystem refuses O_DIRECT")
    os.close(fd)
    import fcntl

    out = DirectWriter(tmp_path / "f.bin")
    try:
        assert fcntl.fcntl(out._fd, fcntl.F_GETFL) & _direct._DIRECT
    finally:
        out.close()


def test_an_error_inside_closes_the_file_without_padding_it(tmp_path):
    path = tmp_path / "f.bin"
    with pytest.raises(RuntimeError), DirectWriter(path) as out:
        out.write(b"y" * (CHUNK + 10))
        raise RuntimeError("stop")
    assert out.closed
    assert path.stat().st_size == CHUNK  # the whole chunks written so far, no tail


def test_an_astropy_hdulist_written_through_it_is_the_file_astropy_writes(tmp_path, mode):
    rng = np.random.default_rng(3)
    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(rng.normal(1, 0.1, (700, 900)).astype(np.float32)),
            fits.ImageHDU(rng.integers(0, 2, (700, 900), np.uint8), name="MASK"),
            fits.ImageHDU(rng.integers(0, 30, (700, 900), np.int16), name="NCOMBINE"),
        ]
    )
    hdul.writeto(tmp_path / "plain.fits")
    with DirectWriter(tmp_path / "direct.fits") as out:
        hdul.writeto(out)
    assert (tmp_path / "direct.fits").read_bytes() == (tmp_path / "plain.fits").read_bytes()
    # with checksums (whose comments carry the time of writing): they hold when read back
    with DirectWriter(tmp_path / "summed.fits") as out:
        hdul.writeto(out, checksum=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(tmp_path / "summed.fits", checksum=True) as back:
            assert len(back) == 3 and all("CHECKSUM" in h.header for h in back)
            for h, want in zip(back, hdul, strict=True):
                np.testing.assert_array_equal(h.data, want.data)


def test_a_read_refused_is_read_again_the_ordinary_way(tmp_path, monkeypatch):
    """O_DIRECT taken by ``open`` but refused by the first read (EINVAL): the same read
    again without it, from the same place."""
    import fcntl
    import io

    refused = []

    class RefusingReads(io.FileIO):
        def readinto(self, view):
            if fcntl.fcntl(self.fileno(), fcntl.F_GETFL) & _direct._DIRECT:
                refused.append(True)
                raise OSError(errno.EINVAL, "Invalid argument")
            return super().readinto(view)

    data = np.random.default_rng(5).integers(0, 256, CHUNK + 4321, np.uint8).tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    monkeypatch.setattr(_direct, "open", lambda fd, *a, **k: RefusingReads(fd, "rb"), raising=False)
    assert b"".join(bytes(c) for _, c in chunks(path)) == data
    fd, direct = _direct._open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    assert refused == ([True] if direct else [])


PLACED_SIZES = [1, 2880, ALIGN, ALIGN + 1, 5 * ALIGN - 7, PIECE + 3 * ALIGN + 11, 2 * CHUNK + 2880]


@pytest.mark.parametrize("size", PLACED_SIZES)
@pytest.mark.parametrize("seed", [0, 1])
def test_pieces_placed_in_any_order_make_the_file(tmp_path, mode, size, seed):
    """Every byte given once, in pieces of every length (within a page, across page
    boundaries, many pages) put in a random order, some staged and some not, some never
    given: the file is exactly those bytes, zeros where none was given, also where the
    last page is partial."""
    rng = np.random.default_rng([size, seed])
    data = rng.integers(0, 256, size, np.uint8).tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * (size + 9000))  # an existing longer file is replaced
    cuts = np.sort(rng.choice(np.arange(1, size), min(size - 1, 9), replace=False))
    edges = [0, *cuts.tolist(), size]
    pieces = [(a, b) for a, b in itertools.pairwise(edges)]
    pieces = [(a + k, min(b, a + k + PIECE)) for a, b in pieces for k in range(0, b - a, PIECE)]
    want = bytearray(data)
    with PlacedWriter(path, size) as out:
        for i in rng.permutation(len(pieces)):
            a, b = pieces[i]
            if i % 4 == 3 and seed:
                want[a:b] = bytes(b - a)  # a gap
            elif i % 2:
                out.put(a, data[a:b])
            else:
                staged = out.staging(a, b - a)
                staged[:] = data[a:b]
                out.put(a, staged)
    assert path.read_bytes() == want


def test_a_piece_outside_the_file_or_larger_than_the_staging_is_refused(tmp_path):
    with PlacedWriter(tmp_path / "f.bin", 100) as out:
        with pytest.raises(ValueError, match="outside"):
            out.put(90, b"y" * 11)
        with pytest.raises(ValueError, match="PIECE"):
            out.staging(0, PIECE + 1)
        out.put(0, b"z" * 100)
    assert (tmp_path / "f.bin").read_bytes() == b"z" * 100


@pytest.mark.parametrize("short", ["first", "second", "every"])
def test_a_short_write_is_finished_at_the_right_offset(tmp_path, mode, monkeypatch, short):
    """os.pwrite writing fewer bytes than asked (a signal, a full pipe: allowed by POSIX),
    the first or second time it can, or every time: the rest is written where it belongs,
    and the file is exactly the bytes given."""
    import fcntl

    real = _direct.os.pwrite  # the mode's refusing one, where it refuses
    calls, cut_short, done = [], [], []
    which = {"first": 0, "second": 1, "every": None}[short]

    def shortened(fd, data, offset):
        view = memoryview(data).cast("B")
        calls.append((offset, len(view)))
        k = len(view) // 2
        if fcntl.fcntl(fd, fcntl.F_GETFL) & _direct._DIRECT:
            k = k // ALIGN * ALIGN  # whole blocks only, past the page cache
        if not k:
            return real(fd, view, offset)
        if which is None or len(done) == which:  # this one comes back short
            written = real(fd, view[:k], offset)  # (a refusal raises: not counted)
            cut_short.append((offset, written, len(view)))
        else:
            written = real(fd, view, offset)
        done.append(written)
        return written

    monkeypatch.setattr(_direct.os, "pwrite", shortened)
    size = 7 * ALIGN + 123
    data = np.random.default_rng(11).integers(0, 256, size, np.uint8).tobytes()
    path = tmp_path / "f.bin"
    cut = 3 * ALIGN + 5  # two pieces: the first ends inside a page
    with PlacedWriter(path, size) as out:
        for a, b in ((cut, size), (0, cut)):
            staged = out.staging(a, b - a)
            staged[:] = data[a:b]
            out.put(a, staged)
    assert cut_short, calls  # some write was short
    assert path.read_bytes() == data
