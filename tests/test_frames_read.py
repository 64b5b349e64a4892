"""FitsFrame's row reads against astropy.io.fits.getdata: every BITPIX with BZERO, BSCALE
and BLANK, in both output precisions, whole frames and row bands."""

import threading

import numpy as np
import pytest
from astropy.io import fits

from gpuflat import _frames
from gpuflat._frames import FitsFrame


def write_raw(path, raw, **keys):
    """A FITS file holding exactly the integers (or floats) ``raw`` and the header ``keys``
    (astropy's writer would rescale data whose header carries BZERO/BSCALE)."""
    kind, size = raw.dtype.kind, raw.dtype.itemsize
    bitpix = 8 * size if kind in "iu" else -8 * size
    header = fits.Header(
        [("SIMPLE", True), ("BITPIX", bitpix), ("NAXIS", 2), ("NAXIS1", raw.shape[1]),
         ("NAXIS2", raw.shape[0])]
    )  # fmt: skip
    for key, value in keys.items():
        header[key] = value
    data = raw.astype(raw.dtype.newbyteorder(">")).tobytes()
    with open(path, "wb") as fh:
        fh.write(header.tostring().encode("ascii"))
        fh.write(data + b"\0" * (-len(data) % 2880))
    return str(path)


def raw_values(dtype, rng, shape=(13, 11)):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        raw = rng.normal(0, 1e4, shape).astype(dtype)
        raw.flat[:3] = [0.0, np.nan, -np.inf]
        return raw
    info = np.iinfo(dtype)
    raw = rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)
    raw.flat[:4] = [info.min, info.max, 0, -1 if info.min < 0 else 1]
    return raw


def expected(path, blank, out_dtype):
    want = np.array(fits.getdata(path), dtype=out_dtype)
    if blank is not None:  # gpuflat: a BLANK pixel is no data, whatever the scaling
        raw = fits.getdata(path, do_not_scale_image_data=True)
        want[raw == blank] = np.nan
    return want


def read(path, out_dtype, bands=None):
    frame = FitsFrame(path)
    try:
        rows = frame.shape[0]
        out = np.full(frame.shape, -7.0, out_dtype)
        step = bands or rows
        for r0 in range(0, rows, step):
            frame.read_rows(r0, min(rows, r0 + step), out[r0 : r0 + step])
        return out
    finally:
        frame.close()


CASES = [
    # raw dtype, header keywords
    ("u1", {}),
    ("u1", {"BZERO": -128}),  # int8 the FITS way
    ("u1", {"BSCALE": 0.5, "BZERO": 3}),
    ("u1", {"BLANK": 0}),
    ("i2", {}),
    ("i2", {"BZERO": 32768}),  # uint16: the usual camera format
    ("i2", {"BZERO": 32768.0}),  # the same, written as a float
    ("i2", {"BZERO": 32768, "BLANK": -32768}),
    ("i2", {"BSCALE": 1.5, "BZERO": 32768, "BLANK": -32768}),
    ("i2", {"BSCALE": 0.1, "BZERO": -3.3}),
    ("i2", {"BZERO": 100}),
    ("i2", {"BLANK": 7}),
    ("i4", {}),
    ("i4", {"BZERO": 2**31}),  # uint32
    ("i4", {"BZERO": 2**31, "BLANK": 0}),
    ("i4", {"BSCALE": 2.5, "BZERO": 100}),
    ("i4", {"BZERO": 100}),  # raw + 100 overflows int32
    ("i4", {"BSCALE": 1e-3, "BLANK": -1}),
    ("i8", {}),
    ("i8", {"BZERO": 2**63}),  # uint64
    ("i8", {"BSCALE": 3.0, "BZERO": -1.5}),
    ("f4", {}),
    ("f4", {"BSCALE": 0.1, "BZERO": 5}),
    ("f8", {}),
    ("f8", {"BSCALE": 2.0, "BZERO": -1}),
]


@pytest.mark.parametrize("chunk", [None, 50])
@pytest.mark.parametrize("bands", [None, 4])
@pytest.mark.parametrize("out_dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("raw_dtype", "keys"), CASES, ids=[f"{d}-{k}" for d, k in CASES])
def test_read_rows_matches_astropy(
    tmp_path, rng, monkeypatch, raw_dtype, keys, out_dtype, bands, chunk
):
    """``chunk``: the stored bytes converted a few at a time (50 bytes: one to six rows of
    11 pixels a chunk, a short last chunk), as a large frame is read."""
    if chunk:
        monkeypatch.setattr(_frames, "_CHUNK_BYTES", chunk)
        monkeypatch.setattr(_frames, "_chunks", threading.local())
    raw = raw_values(raw_dtype, rng)
    if "BLANK" in keys:
        raw.flat[5:9] = keys["BLANK"]
    path = write_raw(tmp_path / "f.fits", raw, **keys)
    got = read(path, out_dtype, bands)
    want = expected(path, keys.get("BLANK"), out_dtype)
    np.testing.assert_array_equal(got, want)  # NaN where NaN, every other value exact


@pytest.mark.parametrize("out_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int8, np.uint64])
def test_files_written_by_astropy_with_uint(tmp_path, rng, dtype, out_dtype):
    info = np.iinfo(dtype)
    data = rng.integers(info.min, info.max, (9, 7), endpoint=True, dtype=dtype)
    data.flat[:2] = [info.min, info.max]
    path = tmp_path / "u.fits"
    fits.PrimaryHDU(data).writeto(path)  # uint=True: BZERO 2**(bits-1), or -128 for int8
    assert fits.getheader(path)["BZERO"] != 0
    with fits.open(path, uint=True) as hdul:
        np.testing.assert_array_equal(hdul[0].data, data)
    np.testing.assert_array_equal(read(path, out_dtype), data.astype(out_dtype))
    np.testing.assert_array_equal(read(path, out_dtype, bands=2), data.astype(out_dtype))
