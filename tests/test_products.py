"""Products (gpuflat._products): names as the guide writes them, the COMBINED keyword the
guide's next notebook looks for, gzip inputs, and verification that really verifies."""

import gzip
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from astropy.io import fits
from conftest import flat_stack, write_fits

from gpuflat import _frames, _products
from gpuflat.cli import main
from gpuflat.errors import GpuflatError


@pytest.fixture
def night(tmp_path, rng):
    d = tmp_path / "night"
    d.mkdir()
    for filt in ("g''", "r'", "B/V"):
        for i, a in enumerate(flat_stack(rng, n=3, shape=(30, 20))):
            name = f"flat-{filt.replace('/', '')}-{i}.fits"
            write_fits(d / name, a, IMAGETYP="FLAT", FILTER=filt)
    return d


def test_names_follow_the_guide_and_the_guide_finds_them(night, tmp_path):
    from ccdproc import ImageFileCollection

    out = tmp_path / "out"
    assert main(["run", str(night), "-o", str(out), "-q"]) == 0
    names = sorted(p.name for p in out.glob("*.fits"))
    # the guide: filt.replace("''", "p"); then what is unsafe in a file name becomes '_'
    assert names == [
        "combined_flat_filter_B_V.fits",
        "combined_flat_filter_gp.fits",
        "combined_flat_filter_r_.fits",
    ]
    found = ImageFileCollection(out).files_filtered(imagetyp="FLAT", combined=True)
    assert sorted(found) == names
    header = fits.getheader(out / "combined_flat_filter_gp.fits")
    assert header["COMBINED"] is True and header["FILTER"] == "g''"


def test_gzip_inputs_give_the_same_products(night, tmp_path, monkeypatch):
    gz = tmp_path / "gz"
    gz.mkdir()
    for p in night.glob("*.fits"):
        with open(p, "rb") as src, gzip.open(gz / (p.name + ".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    calls = []
    real = _frames._gunzip

    def counted(fh, path):
        calls.append(str(path))
        return real(fh, path)

    monkeypatch.setattr(_frames, "_gunzip", counted)
    args = ["--mem-limit", "2e4", "-q", "--no-qa"]  # many bands
    assert main(["run", str(night), "-o", str(tmp_path / "a"), *args]) == 0
    assert not calls
    assert main(["run", str(gz), "-o", str(tmp_path / "b"), *args]) == 0
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 9  # once per file
    for p in (tmp_path / "a").glob("*.fits"):
        with fits.open(p) as a, fits.open(tmp_path / "b" / p.name) as b:
            for x, y in zip(a, b, strict=True):
                assert x.data.tobytes() == y.data.tobytes()
    with (tmp_path / "bad.fits.gz").open("wb") as fh:
        fh.write(gzip.compress(b"x" * 100)[:30])
    code = main(["inspect", str(tmp_path / "bad.fits.gz")])
    assert code == 1


CORRUPT = """
import os, sys
import numpy as np
from astropy.io import fits
from gpuflat import _products
from gpuflat._pipeline import CombineResult

real = fits.HDUList.writeto

def writeto_then_corrupt(self, name, *args, **kwargs):
    real(self, name, *args, **kwargs)
    with open(name, "r+b") as fh:  # flip one byte of the image data
        fh.seek(2880 * 3 + 100)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0xFF]))

fits.HDUList.writeto = writeto_then_corrupt
image = np.ones((20, 30), np.float32)

class R:
    pass

r = R()
r.image = r.uncertainty = image
r.mask = np.zeros((20, 30), bool)
r.count = np.full((20, 30), 3, np.int32)
target = sys.argv[1]
header = fits.Header({"FILTER": "V"})
try:
    _products.write_product(target, r, header)
except Exception as exc:
    print("refused:", type(exc).__name__)
print("exists:", os.path.exists(target), "left:", sorted(os.listdir(os.path.dirname(target))))
"""


@pytest.mark.parametrize("where", ["image", "count", "header"])
def test_verification_checks_every_hdu_checksum(tmp_path, where):
    """The chunked check of the plain HDUs' checksums: a product as written passes; one byte
    changed in the first HDU's data, in the last one's, or in a header, fails."""
    image = np.random.default_rng(1).uniform(0.9, 1.1, (40, 50)).astype(np.float32)
    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(image, fits.Header({"FILTER": "V"})),
            fits.ImageHDU(np.zeros(image.shape, np.uint8), name="MASK"),
            fits.ImageHDU(image * 0.01, name="UNCERT"),
            fits.ImageHDU(np.full(image.shape, 7, np.int16), name="NCOMBINE"),
        ]
    )
    path = tmp_path / "p.fits"
    hdul.writeto(path, checksum=True)
    expected = [h.data for h in hdul]
    _products._verify(path, expected, path, False)
    raw = bytearray(path.read_bytes())
    with fits.open(path) as f:
        first, last = f.fileinfo(0)["datLoc"], f.fileinfo(3)["datLoc"]
    if where == "header":
        raw[raw.index(b"'UNCERT") + 6] = ord("X")  # EXTNAME 'UNCERX': a valid header
    else:
        raw[(first if where == "image" else last) + 5] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(GpuflatError, match="checksum"):
        _products._verify(path, expected, path, False)


def test_a_product_that_does_not_verify_is_never_committed(tmp_path):
    """In a plain interpreter (no pytest warnings filter): a checksum mismatch stops the
    commit, and the temporary is removed."""
    target = tmp_path / "out" / "product.fits"
    target.parent.mkdir()
    script = tmp_path / "corrupt.py"
    script.write_text(textwrap.dedent(CORRUPT))
    out = subprocess.run(
        [sys.executable, str(script), str(target)], capture_output=True, text=True, timeout=120
    )
    assert "refused:" in out.stdout, out.stdout + out.stderr
    assert "exists: False left: []" in out.stdout, out.stdout


def _result(shape, count_max, rng):
    from types import SimpleNamespace

    count = rng.integers(0, count_max + 1, shape).astype(np.int32)
    return SimpleNamespace(
        image=rng.normal(1, 0.1, shape).astype(np.float32),
        uncertainty=rng.uniform(0, 0.01, shape).astype(np.float32),
        count=count,
        mask=count == 0,
    )


@pytest.mark.parametrize(
    "shape, count_max",
    [((1, 1), 5), ((256, 255), 12), ((300, 700), 40), ((50, 40), 40000), ((0, 7), 3)],
)
def test_the_planes_are_written_as_astropy_writes_them_and_given_back_unchanged(
    tmp_path, rng, shape, count_max
):
    """write_product stores the result's planes big-endian in their own memory while they
    are written (the count narrowed to int16 in place when it fits): the file holds what
    astropy writes from the plain arrays, and the result is as it was afterwards."""
    r = _result(shape, count_max, rng)
    before = {k: getattr(r, k).copy() for k in ("image", "uncertainty", "count", "mask")}
    path = tmp_path / "p.fits"
    _products.write_product(path, r, fits.Header({"FILTER": "V"}))
    for k, v in before.items():
        got = getattr(r, k)
        assert got.dtype == v.dtype and got.dtype.isnative
        np.testing.assert_array_equal(got, v)
    with fits.open(path, checksum=True) as f:
        np.testing.assert_array_equal(f[0].data, before["image"])
        np.testing.assert_array_equal(f["UNCERT"].data, before["uncertainty"])
        np.testing.assert_array_equal(f["MASK"].data, before["mask"].astype(np.uint8))
        np.testing.assert_array_equal(f["NCOMBINE"].data, before["count"])
        assert f["NCOMBINE"].data.dtype == (np.dtype(">i2") if count_max < 32768 else ">i4")
        assert f[0].header["BITPIX"] == -32 and f["MASK"].header["BITPIX"] == 8


def test_a_failed_write_gives_the_planes_back_unchanged(tmp_path, rng, monkeypatch):
    r = _result((130, 90), 9, rng)
    before = {k: getattr(r, k).copy() for k in ("image", "uncertainty", "count")}

    def refuse(*args):
        raise GpuflatError("refused")

    monkeypatch.setattr(_products, "_verify", refuse)
    with pytest.raises(GpuflatError, match="refused"):
        _products.write_product(tmp_path / "p.fits", r, fits.Header())
    assert not (tmp_path / "p.fits").exists()
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(r, k), v)


def test_a_compressed_product_reads_back_losslessly_and_the_planes_come_back(tmp_path, rng):
    r = _result((120, 90), 17, rng)
    before = {k: getattr(r, k).copy() for k in ("image", "uncertainty", "count")}
    path = tmp_path / "p.fits"
    _products.write_product(path, r, fits.Header({"FILTER": "V"}), compress=True)
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(r, k), v)
        assert getattr(r, k).dtype.isnative
    with fits.open(path) as f:
        np.testing.assert_array_equal(f[0].data, before["image"])
        np.testing.assert_array_equal(f["UNCERT"].data, before["uncertainty"])
        np.testing.assert_array_equal(f["NCOMBINE"].data, before["count"])


def _cards(h):
    """A header's cards, but for the times of writing (the checksum cards' comments) and
    the CHECKSUM that covers them."""
    return [
        (c.keyword, c.value if c.keyword != "CHECKSUM" else None,
         c.comment if c.keyword not in ("CHECKSUM", "DATASUM") else None)
        for c in h.cards
    ]  # fmt: skip


def _same_product(a, b):
    """Files ``a`` and ``b`` are the same product: the same bytes but for the checksum
    cards' time stamps (so the same layout, headers, data and DATASUMs), and the
    checksums of both hold."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(a, checksum=True) as x, fits.open(b, checksum=True) as y:
            assert len(x) == len(y)
            for hx, hy in zip(x, y, strict=True):
                assert _cards(hx.header) == _cards(hy.header)
                assert hx.fileinfo()["datLoc"] == hy.fileinfo()["datLoc"]
    raw_a, raw_b = a.read_bytes(), b.read_bytes()
    assert len(raw_a) == len(raw_b)
    with fits.open(a) as x:
        for i, h in enumerate(x):
            info = h.fileinfo()
            start, end = info["datLoc"], info["datLoc"] + info["datSpan"]
            assert raw_a[start:end] == raw_b[start:end], f"HDU {i}: data differ"


@pytest.mark.parametrize(
    "shape, bands",
    [
        ((1, 1), [1]),
        ((3, 5), [1, 1, 1]),  # rows of 5 bytes of mask, 10 of count: every phase of a word
        ((256, 255), [256]),  # one band: the whole planes (a single band, the CUDA path)
        ((257, 255), [7, 100, 1, 149]),
        ((300, 700), [64] * 4 + [44]),
        ((2000, 1100), [1000, 1000]),  # pieces of more than one staging buffer
    ],
)
def test_a_streamed_product_is_the_product_written_whole(tmp_path, rng, shape, bands):
    """Bands of rows stored as they come, in pieces of every phase against 32-bit words
    and pages, give write_product's file; the counts of survivors and empty pixels are
    those of the planes."""
    result = _result(shape, 9, rng)
    result.image[result.mask] = np.nan
    header = fits.Header([("FILTER", "V"), ("EXPTIME", 3.0)])
    _products.write_product(tmp_path / "whole.fits", result, header, unit="adu")
    product = _products.StreamedProduct(tmp_path / "streamed.fits", header, shape, unit="adu")
    r0 = 0
    for rows in bands:
        r1 = r0 + rows
        lent = product.rows(r0, r1)
        assert all(a.flags.aligned and a.flags.c_contiguous for a in lent)  # for the kernels
        for out, plane in zip(lent, (result.image, result.uncertainty, result.count),
                              strict=True):  # fmt: skip
            out[...] = plane[r0:r1].reshape(-1)
        product.done(r0, r1)
        r0 = r1
    product.close()
    assert product.survivors == result.count.sum() and product.empty == result.mask.sum()
    assert product.write() == tmp_path / "streamed.fits"
    _same_product(tmp_path / "whole.fits", tmp_path / "streamed.fits")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.fits", "whole.fits"]


def test_a_streamed_product_that_fails_leaves_nothing(tmp_path, rng, monkeypatch):
    """A band that cannot be written (disk full) fails the combination when the next band
    or the end comes; discarding the product removes its temporary. A product discarded
    before its end (the combination failed, or QA redoes it) leaves nothing either."""
    from gpuflat import _direct

    shape = (40, 30)
    result = _result(shape, 9, rng)
    for failing in (True, False):
        product = _products.StreamedProduct(tmp_path / "p.fits", fits.Header(), shape)
        if failing:

            def full(self, offset, piece):
                raise OSError(28, "No space left on device")

            monkeypatch.setattr(_direct.PlacedWriter, "put", full)
        with pytest.raises(OSError, match="No space"):
            for r0 in range(0, 40, 10):
                for out, plane in zip(product.rows(r0, r0 + 10), (result.image,
                                      result.uncertainty, result.count), strict=True):  # fmt: skip
                    out[...] = plane[r0 : r0 + 10].reshape(-1)
                product.done(r0, r0 + 10)
            product.close()
            if not failing:
                raise OSError(28, "No space left on device")  # the combination's own
        product.discard()
        monkeypatch.undo()
        assert list(tmp_path.iterdir()) == []


def test_a_streamed_product_that_does_not_verify_is_never_committed(tmp_path, rng, monkeypatch):
    """A byte changed on the disk after it was written: the checksums catch it, the
    temporary goes and nothing is committed."""
    from gpuflat import _direct

    shape = (64, 64)
    result = _result(shape, 9, rng)
    real_close = _direct.PlacedWriter.close

    def close_then_corrupt(self):
        real_close(self)
        path = next(tmp_path.glob(".p.fits.tmp-*"))
        raw = bytearray(path.read_bytes())
        raw[-3000] ^= 1  # in NCOMBINE's data
        path.write_bytes(bytes(raw))

    monkeypatch.setattr(_direct.PlacedWriter, "close", close_then_corrupt)
    product = _products.StreamedProduct(tmp_path / "p.fits", fits.Header(), shape)
    for out, plane in zip(product.rows(0, 64), (result.image, result.uncertainty,
                          result.count), strict=True):  # fmt: skip
        out[...] = plane.reshape(-1)
    product.done(0, 64)
    with pytest.raises(GpuflatError, match="NCOMBINE fails its checksum"):
        product.write()
    assert list(tmp_path.iterdir()) == []


def test_a_streamed_product_whose_last_store_fails_is_removed_by_its_write(
    tmp_path, rng, monkeypatch
):
    """The last bands are stored after the combination returns: a store that fails then
    (a full disk) fails the product's write, which leaves nothing behind."""
    from gpuflat import _direct

    def full(self, offset, piece):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_direct.PlacedWriter, "put", full)
    shape = (40, 30)
    result = _result(shape, 9, rng)
    product = _products.StreamedProduct(tmp_path / "p.fits", fits.Header(), shape)
    for out, plane in zip(product.rows(0, 40), (result.image, result.uncertainty,
                          result.count), strict=True):  # fmt: skip
        out[...] = plane.reshape(-1)
    product.done(0, 40)
    with pytest.raises(OSError, match="No space"):
        product.write()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["read-only", "memmap-r", "memmap-r+", "strided"])
@pytest.mark.parametrize("count_max", [9, 40000])
def test_read_only_and_memory_mapped_planes_are_written(tmp_path, rng, kind, count_max):
    """write_product takes planes it may not change in place (read-only arrays, read-only
    memory maps), memory maps it may change, and views that are not contiguous: the file
    is the one written from ordinary arrays, and the planes are as they were."""
    from types import SimpleNamespace

    plain = _result((37, 29), count_max, rng)
    plain.image[plain.mask] = np.nan
    names = ("image", "uncertainty", "count")
    before = {k: getattr(plain, k).copy() for k in names}
    planes = {}
    for k in names:
        a = getattr(plain, k).copy()
        if kind == "read-only":
            a.setflags(write=False)
        elif kind.startswith("memmap"):
            f = tmp_path / f"{k}.npy"
            a.tofile(f)
            a = np.memmap(f, a.dtype, kind[len("memmap-") :], shape=a.shape)
        else:
            wide = np.zeros((a.shape[0], 2 * a.shape[1]), a.dtype)
            wide[:, ::2] = a
            a = wide[:, ::2]
        planes[k] = a
    result = SimpleNamespace(**planes, mask=planes["count"] == 0)
    header = fits.Header({"FILTER": "V"})
    _products.write_product(tmp_path / "plain.fits", plain, header)
    _products.write_product(tmp_path / "other.fits", result, header)
    _same_product(tmp_path / "plain.fits", tmp_path / "other.fits")
    with fits.open(tmp_path / "other.fits", checksum=True) as f:
        np.testing.assert_array_equal(f[0].data, before["image"])
        np.testing.assert_array_equal(f["UNCERT"].data, before["uncertainty"])
        np.testing.assert_array_equal(f["NCOMBINE"].data, before["count"])
        np.testing.assert_array_equal(f["MASK"].data, before["count"] == 0)
    for k in names:
        assert planes[k].dtype == before[k].dtype
        np.testing.assert_array_equal(planes[k], before[k])
        if kind.startswith("memmap"):
            planes[k].flush()
            np.testing.assert_array_equal(np.fromfile(tmp_path / f"{k}.npy", before[k].dtype),
                                          before[k].reshape(-1))  # fmt: skip
