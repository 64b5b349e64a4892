"""``kernels/convert.cu`` (through the CPU shim) against ``_frames.scale_raw``, the CPU
reference, for every BITPIX, the unsigned conventions, scaled data in both working
precisions, BLANK, and values that only compare by bits (subnormals, signed zeros)."""

from __future__ import annotations

import cuda_harness as harness
import numpy as np
import pytest

from gpuflat._frames import scale_raw
from gpuflat.backends._kernels import BITPIX_DTYPES, convert_args

pytestmark = pytest.mark.skipif(harness.compiler() is None, reason="no host C++ compiler (g++)")

SCALINGS = [
    (1, 0),
    (1.0, 0.0),
    (1, -128),  # the unsigned convention of BITPIX 8
    (1, 32768),
    (1, 2**31),
    (1, 2**63),
    (1, 1.5),
    (2, 0),  # an integer BSCALE
    (2.5, 100),
    (0.1, -3.3),
    (1e-3, 0),
    (-1, 0),
    (1, -32768),  # not a convention: plain arithmetic
    (1.0000000001, 0),  # rounds to 1 in float32
    (1, 1e-50),  # rounds to 0 in float32: x + 0 still turns -0 into +0
    (1e-42, 0),  # subnormal float32 results
    (1e-40, 1e-39),
    (0.5, -7e-40),
    (3.0, 2**63),
]


def _raw(bitpix, rng):
    dtype = BITPIX_DTYPES[bitpix]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        raw = rng.integers(info.min, info.max, 3000, endpoint=True, dtype=dtype.newbyteorder("="))
        raw[:5] = [info.min, info.max, 0, 1, info.max - 1]
        raw[5:40] = np.arange(35) + (info.min if dtype.kind == "i" else 0)
        return raw.astype(dtype)
    raw = rng.normal(0, 1e4, 3000) * rng.choice([1, 1e-30, 1e30, 1e-42, 1e-310], 3000)
    raw = raw.astype(dtype)
    special = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-40, 1.4e-45, -1.4e-45, 2.0**-126, 3e-39]
    raw[: len(special)] = special
    return raw


def _blanks(bitpix, raw):
    if bitpix < 0:
        return [None, 7]  # ignored for floats
    present = int(raw[7])  # FitsFrame hands BLANK over as an int (or None)
    return [None, present, int(raw.max()), 2**70]


def _same(got, want):
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(got.view(np.uint32)[ok], want.view(np.uint32)[ok])


@pytest.mark.parametrize("bitpix", [8, 16, 32, 64, -32, -64])
@pytest.mark.parametrize(("bscale", "bzero"), SCALINGS)
def test_convert_matches_scale_raw(bitpix, bscale, bzero):
    raw = _raw(bitpix, np.random.default_rng(abs(bitpix) + 1))
    for blank in _blanks(bitpix, raw):
        want = np.empty(raw.shape, np.float32)
        scale_raw(raw, want, bscale, bzero, blank)
        got = harness.convert(raw, bitpix, bscale, bzero, blank)
        _same(got, want)
        if blank is not None and bitpix > 0 and abs(blank) < 2**63:
            assert np.isnan(got[raw == blank]).all() and (raw == blank).any()


def test_convert_args_modes():
    """The decision table (the kernel's mode) follows scale_raw's branches."""
    mode = lambda bitpix, s, z: convert_args(BITPIX_DTYPES[bitpix], s, z, None)[1]  # noqa: E731
    assert mode(16, 1, 0) == 0 and mode(-64, 1.0, 0.0) == 0
    assert mode(8, 1, -128) == 1 and mode(16, 1, 32768) == 1 and mode(64, 1, 2**63) == 1
    assert mode(8, 1, 128) == 2 | 8 and mode(16, 2.5, 0) == 2 | 4 and mode(-32, 2, 1) == 2 | 12
    assert mode(32, 2.5, 1) == 3 | 12 and mode(64, 1, 5) == 3 | 8 and mode(-64, 0.5, 0) == 3 | 4
    assert convert_args(BITPIX_DTYPES[-32], 1, 0, 7)[4] == 0  # floats have no BLANK
