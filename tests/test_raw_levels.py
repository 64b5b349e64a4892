"""Frame levels from stored 8- and 16-bit integers (``raw_level``) against ``frame_level``
on the frame as ``_frames.scale_raw`` converts it, and pass 1 of a banded combination that
uses them against one that converts."""

import numpy as np
import pytest
from conftest import write_fits

import gpuflat
from gpuflat._frames import RawFormat, scale_raw
from gpuflat.backends import NumbaBackend, _numba, _numba_median

CASES = [
    # stored dtype, BZERO, BLANK
    (">i2", 32768, None),  # uint16, the usual camera format
    (">i2", 0, None),
    (">i2", -1000, None),
    (">i2", 32768, -32768),
    (">i2", 0, 7),
    (">i2", 0, 40000),  # no stored value equals it: blanks nothing
    ("u1", 0, None),
    ("u1", -128, None),  # int8 the FITS way
    ("u1", 10, 0),
]


def stored(rng, dtype, shape, blank):
    dtype = np.dtype(dtype)
    info = np.iinfo(dtype.newbyteorder("="))
    # a flat's narrow spread (many ties, as real data have) and the extremes
    centre = (int(info.min) + int(info.max)) // 2
    a = np.clip(rng.normal(centre, 40, shape), info.min, info.max).astype(dtype)
    a.flat[:2] = [info.min, info.max]
    if blank is not None and info.min <= blank <= info.max:
        a.flat[5:50] = blank
    return a


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("shape", [(37, 29), (600, 500)])  # the large one: numba's median
@pytest.mark.parametrize(("dtype", "bzero", "blank"), CASES)
def test_raw_level_equals_frame_level(rng, dtype, bzero, blank, shape, masked):
    a = stored(rng, dtype, shape, blank)
    fmt = RawFormat(np.dtype(dtype), 1, bzero, blank)
    assert _numba_median.measures_raw(fmt)
    values = np.empty(shape, np.float32)
    scale_raw(a, values, 1, bzero, blank)  # the reference conversion
    mask = rng.random(shape) < 0.3 if masked else None
    raw = np.frombuffer(a.tobytes(), np.uint8)
    for how in ("median", "mean"):
        want = _numba.frame_level(values, mask, how)
        got = _numba_median.raw_level(raw, fmt, mask, how)
        assert got == want, (how, got, want)


def test_nothing_usable_is_nan():
    a = np.full((4, 5), 7, ">i2")
    fmt = RawFormat(np.dtype(">i2"), 1, 0, 7)
    raw = np.frombuffer(a.tobytes(), np.uint8)
    assert np.isnan(_numba_median.raw_level(raw, fmt, None, "median"))
    fmt = RawFormat(np.dtype(">i2"), 1, 0, None)
    assert np.isnan(_numba_median.raw_level(raw, fmt, np.ones((4, 5), bool), "mean"))


@pytest.mark.parametrize(
    ("dtype", "bscale", "bzero"),
    [(">i4", 1, 0), (">f4", 1, 0), (">i2", 2, 0), (">i2", 1, 0.5), (">i2", 1, 2**24)],
)
def test_formats_left_to_the_conversion(dtype, bscale, bzero):
    assert not _numba_median.measures_raw(RawFormat(np.dtype(dtype), bscale, bzero, None))


def test_banded_pass1_measures_stored_values(tmp_path, rng, monkeypatch):
    """A uint16 stack streamed in bands: the levels from the stored values equal those of
    the converted frames, and so does everything combined with them."""
    paths = []
    for i in range(6):
        data = np.clip(rng.normal(30000 + 500 * i, 200, (90, 70)), 0, 65535).astype(np.uint16)
        data[i, :5] = 65535  # outliers, clipped
        paths.append(write_fits(tmp_path / f"f{i}.fits", data, IMAGETYP="FLAT"))
    calls = []
    real = NumbaBackend.raw_level

    def counted(self, *args, **kw):
        calls.append(args[1])
        return real(self, *args, **kw)

    monkeypatch.setattr(NumbaBackend, "raw_level", counted)
    kw = dict(mem_limit=200_000, backend="cpu")  # a few rows a band
    got = gpuflat.combine(paths, **kw)
    assert got.plan.nbands > 1 and len(calls) == 6  # pass 1 read the stored values
    monkeypatch.setattr(NumbaBackend, "measures_raw", lambda self, fmt: False)
    want = gpuflat.combine(paths, **kw)
    assert len(calls) == 6  # converted this time
    assert got.levels == want.levels
    np.testing.assert_array_equal(got.scales, want.scales)
    np.testing.assert_array_equal(got.image, want.image)
    np.testing.assert_array_equal(got.uncertainty, want.uncertainty)
    np.testing.assert_array_equal(got.count, want.count)
