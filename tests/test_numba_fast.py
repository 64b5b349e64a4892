"""The numba backend's fast paths against its literal per-pixel path and NumPy.

- the fast block path (``_numba_fast``) must give bit for bit what the per-pixel path
  (``_combine_pixels``, the transcription of docs/kernel-contract.md) gives, rejected counts
  included, whatever mix of lanes it hands back to that path;
- the bracketed frame median (``_numba_median``) must equal np.median exactly, and fall back
  to the radix selection when its bracket misses.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import reference_combine

from gpuflat.backends import _networks, _numba, _numba_fast, _numba_median
from gpuflat.backends._numba_fast import FAST_L, fast_eligible
from gpuflat.backends._params import KernelParams


def per_pixel(data, mask, scale, weight, params):
    """The literal per-pixel path over the whole band (outputs and rejected counts)."""
    n, npix = data.shape
    out = (np.empty(npix), np.empty(npix), np.empty(npix, np.int32))
    rejected = np.zeros(n, np.int64)
    _numba._combine_pixels(
        data,
        _numba._NO_MASK if mask is None else mask,
        mask is not None,
        np.ascontiguousarray(scale, np.float64),
        _numba._NO_WEIGHT if weight is None else weight,
        weight is not None,
        _numba._as_tuple(params, n),
        0,
        npix,
        *out,
        rejected,
        _numba._ALL_RULES,
    )
    return out, rejected


def assert_bits_equal(got, want, what=""):
    """Bit for bit, NaN only where NaN (the project's standard, as in test_cuda_kernels: LLVM
    does not keep a NaN's sign or payload, so a NaN is compared as a NaN)."""
    for name, g, w in zip(("image", "uncert", "count"), got, want, strict=True):
        assert g.dtype == w.dtype, (what, name)
        if g.dtype.kind == "f":
            nan = np.isnan(w)
            np.testing.assert_array_equal(np.isnan(g), nan, err_msg=f"{what} {name}: NaN")
            g, w = g[~nan], w[~nan]
        bad = np.flatnonzero(g.view(np.uint8) != w.view(np.uint8)) // g.itemsize
        assert bad.size == 0, f"{what} {name}: {bad[:5]} {g[bad[:3]]} vs {w[bad[:3]]}"


def check(data, mask, scale, weight, params):
    rejected = np.zeros(len(data), np.int64)
    got = _numba.combine_band(data, mask, scale, weight, params, rejected=rejected)
    want, want_rejected = per_pixel(data, mask, scale, weight, params)
    assert_bits_equal(got, want, str(params))
    np.testing.assert_array_equal(rejected, want_rejected)
    return got


FAST_PARAMS = {
    "guide": KernelParams(),
    "median": KernelParams(method=1),
    "sum": KernelParams(method=2),
    "tight": KernelParams(sigma_low=1.0, sigma_high=1.5),
    "zero-sigma": KernelParams(sigma_low=0.0, sigma_high=0.0),
    "one-sided": KernelParams(sigma_low=math.inf, sigma_high=1.0),
    "open": KernelParams(sigma_low=math.inf, sigma_high=math.inf),
    "iterate": KernelParams(maxiters=-1, sigma_low=2.0, sigma_high=2.0),
    "maxiters-3-median": KernelParams(maxiters=3, method=1, sigma_low=1.5),
    "minmax": KernelParams(min_value=950.0, max_value=1060.0),
}


def test_generated_merges_are_current():
    """The merges in registers are the code ``_networks.render`` makes from the networks."""
    want = _networks.render(_numba_fast._trow.py_func, FAST_L)
    assert _networks.MERGES.read_text() == want, "run: python -m gpuflat.backends._generate"


@pytest.mark.parametrize("name", sorted(_networks.DEPENDS_ON))
def test_numba_cache_follows_the_modules_it_holds(name):
    """numba keys the cache of a file's functions on that file's text alone, and they hold
    code inlined or called from the files in ``_networks.DEPENDS_ON``: the file must carry
    those files' digest, so that an edit there recompiles instead of loading stale code
    (``python -m gpuflat.backends._generate`` sets them)."""
    module = importlib.import_module(f"gpuflat.backends.{name[:-3]}")
    want = _networks.source_digest(_networks.DEPENDS_ON[name])
    assert want == module._DEPENDS_ON, f"run: python -m gpuflat.backends._generate ({name})"


def test_fast_family():
    assert fast_eligible(KernelParams(), 15)
    for params in FAST_PARAMS.values():
        assert fast_eligible(params, 3)
    for other in (
        KernelParams(clip_scaled=0),
        KernelParams(nlow=1),
        KernelParams(nhigh=1),
        KernelParams(sigma=0),
        KernelParams(center=1),
        KernelParams(dev=1),
        KernelParams(maxiters=0),
    ):
        assert not fast_eligible(other, 15)


def band(rng, n, npix, *, ties=False, odd=0.0):
    data = rng.normal(1000.0, 30.0, (n, npix))
    if ties:
        data = np.round(data / 25.0) * 25.0
    data[rng.random(data.shape) < 0.01] *= 30.0  # outliers
    data = data.astype(np.float32)
    if odd:
        pick = rng.random(data.shape) < odd
        specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-42, -1e-42, 3e38], np.float32)
        data[pick] = rng.choice(specials, pick.sum())
    return data


@pytest.mark.parametrize("name", FAST_PARAMS)
# every run structure: one run, 16 + up to 8, two runs, and the padded networks in
# registers (24, 32, 40, 48) at both ends of their range, then the merge through memory
@pytest.mark.parametrize(
    "n", [1, 2, 3, 4, 5, 8, 15, 16, 17, 20, 24, 25, 31, 32, 33, 40, 41, 48, 49, 64]
)
def test_fast_path_matches_per_pixel(name, n):
    rng = np.random.default_rng(n * 31 + len(name))
    npix = 3 * FAST_L + 37  # full blocks and a partial one
    data = band(rng, n, npix, ties=n % 2 == 0, odd=0.002)
    mask = (rng.random(data.shape) < 0.003).astype(np.uint8) if n % 3 == 0 else None
    scale = 1.0 / rng.uniform(500.0, 2000.0, n)
    weight = rng.uniform(0.5, 2.0, n) if n % 4 == 1 else None
    check(data, mask, scale, weight, FAST_PARAMS[name])


def test_fast_path_special_values_every_lane_kind():
    """Lanes with ties everywhere (MAD 0), ±0, subnormals, NaN, ±inf, masked samples, values
    beyond the overflow guard, and clean lanes, in the same blocks."""
    n, npix = 9, 4 * FAST_L
    rng = np.random.default_rng(5)
    data = rng.normal(1000.0, 30.0, (n, npix)).astype(np.float32)
    data[:, 0] = 1000.0  # all equal: MAD 0, nothing clipped
    data[:, 1] = 1000.0
    data[4, 1] = 5000.0  # MAD 0: the outlier goes
    data[:, 2] = np.float32(-0.0)
    data[::2, 3] = 0.0
    data[:, 4] = np.float32(1e-42)  # subnormal float32
    data[::3, 5] = np.float32(-1e-44)
    data[2, 6] = np.nan
    data[3, 7] = np.inf
    data[:, 8] = np.nan
    data[5, 9] = 3e38
    data[:, 70] = np.arange(n)  # distinct, all kept
    data[:, 71] = [1, 1, 2, 2, 2, 3, 3, 3, 3]
    mask = np.zeros(data.shape, np.uint8)
    mask[1, 10] = 1
    mask[:, 11] = 1
    for scale in (np.ones(n), rng.uniform(0.5, 2.0, n), np.full(n, 1e300), np.full(n, 1e-300)):
        for params in FAST_PARAMS.values():
            check(data, mask, scale, None, params)
            check(data, None, scale, rng.uniform(0.5, 2.0, n), params)


@pytest.mark.parametrize("n", [7, 15, 24])
@pytest.mark.parametrize("weighted", [False, True])
def test_fast_path_few_and_many_clipped_lanes(n, weighted):
    """Blocks in which 1, 16, 17 and all 64 lanes clip (the lanes that clip are redone one
    by one in a block with few of them, and the whole block's sums masked otherwise), on
    values that clip nothing else (uniform: no tail beyond 5 MAD-sigma)."""
    rng = np.random.default_rng(n)
    data = rng.uniform(999.0, 1001.0, (n, 5 * FAST_L)).astype(np.float32)
    for block, lanes in enumerate([0, 1, 16, 17, FAST_L]):
        data[n // 2, block * FAST_L : block * FAST_L + lanes] = 5000.0
        data[0, block * FAST_L + 3 : block * FAST_L + lanes : 2] = 10.0  # low ones too
    scale = 1.0 / rng.uniform(900.0, 1100.0, n)
    weight = rng.uniform(0.5, 2.0, n) if weighted else None
    count = check(data, None, scale, weight, KernelParams())[2]
    clipped = count.reshape(5, FAST_L) < n
    assert clipped.sum(axis=1).tolist() == [0, 1, 16, 17, FAST_L]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 56),
    blocks=st.integers(1, 3),
    extra=st.integers(0, FAST_L - 1),
    seed=st.integers(0, 2**32 - 1),
    distinct=st.sampled_from([0, 1, 2, 3, 7]),
    odd=st.sampled_from([0.0, 0.001, 0.05]),
    use_mask=st.booleans(),
    use_weight=st.booleans(),
    params=st.sampled_from(list(FAST_PARAMS.values())),
)
def test_fast_path_hypothesis(n, blocks, extra, seed, distinct, odd, use_mask, use_weight, params):
    rng = np.random.default_rng(seed)
    npix = blocks * FAST_L + extra
    if distinct:
        data = rng.choice(rng.normal(1000.0, 30.0, distinct), (n, npix)).astype(np.float32)
    else:
        data = band(rng, n, npix)
    if odd:
        pick = rng.random(data.shape) < odd
        data[pick] = rng.choice(
            np.array([np.nan, np.inf, 0.0, -0.0, 1e-42], np.float32), pick.sum()
        )
    mask = (rng.random(data.shape) < 0.01).astype(np.uint8) if use_mask else None
    scale = rng.choice([1.0, 1e-3, 1.0 / 3.0, 2.5], n) * rng.uniform(0.9, 1.1, n)
    weight = rng.uniform(0.1, 3.0, n) if use_weight else None
    check(data, mask, scale, weight, params)


@pytest.mark.parametrize("n", [1, 5, 15, 40])
def test_fast_path_against_numpy_reference(n):
    rng = np.random.default_rng(n)
    data = band(rng, n, 2 * FAST_L + 5)
    scale = 1.0 / rng.uniform(500.0, 2000.0, n)
    rejected = np.zeros(n, np.int64)
    image, uncert, count = _numba.combine_band(
        data, None, scale, None, KernelParams(), rejected=rejected
    )
    ref_image, ref_uncert, ref_count, ref_rejected = reference_combine(
        data, None, scale, return_rejected=True
    )
    np.testing.assert_array_equal(count, ref_count)
    np.testing.assert_array_equal(rejected, ref_rejected)
    np.testing.assert_allclose(image, ref_image, rtol=1e-12)
    np.testing.assert_allclose(uncert, ref_uncert, rtol=1e-9, atol=1e-300)


def test_band_split_does_not_change_a_bit():
    """Blocks start wherever the band starts: the same pixels combined in two bands."""
    rng = np.random.default_rng(9)
    data = band(rng, 15, 5 * FAST_L + 11, odd=0.003)
    scale = rng.uniform(0.5, 2.0, 15)
    whole = _numba.combine_band(data, None, scale, None, KernelParams())
    cut = 2 * FAST_L + 7
    parts = [
        _numba.combine_band(np.ascontiguousarray(d), None, scale, None, KernelParams())
        for d in (data[:, :cut], data[:, cut:])
    ]
    for i in range(3):
        assert np.concatenate([p[i] for p in parts]).tobytes() == whole[i].tobytes()


# -- the bracketed frame median ------------------------------------------------------------


def exact_median(frame, mask=None):
    good = np.isfinite(frame) & (True if mask is None else mask == 0)
    return float(np.median(frame[good].astype(np.float64))) if good.any() else math.nan


def large_frame(rng, kind, shape=(700, 800)):
    if kind == "normal":
        return rng.normal(1000.0, 30.0, shape).astype(np.float32)
    if kind == "uint16":
        return rng.poisson(1000.0, shape).astype(np.uint16).astype(np.float32)
    if kind == "ties":
        return rng.choice(np.array([3.0, 5.0, 7.0], np.float32), shape)
    if kind == "zeros":
        f = rng.normal(0.0, 1e-3, shape).astype(np.float32)
        f[rng.random(shape) < 0.3] = 0.0
        f[rng.random(shape) < 0.3] = -0.0
        return f
    if kind == "special":
        f = rng.normal(1000.0, 30.0, shape).astype(np.float32)
        f[rng.random(shape) < 0.05] = np.nan
        f[rng.random(shape) < 0.02] = np.inf
        f[rng.random(shape) < 0.02] = -np.inf
        f[rng.random(shape) < 0.01] = np.float32(1e-42)
        return f
    if kind == "even-gap":  # an even count whose two middle values are far apart
        f = np.repeat(np.array([10.0, 2000.0], np.float32), shape[0] * shape[1] // 2)
        return rng.permutation(f).reshape(shape)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["normal", "uint16", "ties", "zeros", "special", "even-gap"])
@pytest.mark.parametrize("masked", [False, True])
def test_bracket_median_is_exact(kind, masked):
    rng = np.random.default_rng(len(kind) + masked)
    frame = large_frame(rng, kind)
    assert frame.size >= _numba_median.MIN_SIZE
    mask = (rng.random(frame.shape) < 0.2) if masked else None
    assert _numba.frame_level(frame, mask, "median") == exact_median(frame, mask)
    # the bracket itself, where it applies, is exact too
    m = (
        np.ascontiguousarray(mask != 0).view(np.uint8).ravel()
        if masked
        else _numba._NO_MASK.ravel()
    )
    found = _numba_median.select(frame.ravel(), m, masked, 2)
    assert found is None or found == exact_median(frame, mask)
    if kind in ("normal", "uint16", "special"):
        assert found is not None  # the common case takes the bracket


@pytest.mark.parametrize("sample", [1 << 10, 1 << 12, 1 << 14, 1 << 16])
def test_bracket_with_zero_bounds(sample):
    """Mostly signed zeros: the bracket's bounds are zeros of either sign (they compare
    equal, so the partition may return +0.0 below -0.0); the bracket still covers both
    zeros' keys and stays exact (a regression: such a bracket once had no keys at all)."""
    rng = np.random.default_rng(sample)
    frame = large_frame(rng, "zeros")
    found = _numba_median.select(frame.ravel(), _numba._NO_MASK.ravel(), False, 2, sample)
    assert found is None or found == exact_median(frame)


def test_bracket_misses_fall_back_to_radix(monkeypatch):
    """A bracket that misses the middle ranks (a tiny sample of a frame whose halves differ)
    or spans too many keys: None from select, and the exact median from frame_level."""
    rng = np.random.default_rng(3)
    frame = rng.normal(1000.0, 30.0, (600, 700)).astype(np.float32)
    frame[:300] += 500.0  # the sample's bracket is unlikely to hold the middle
    want = exact_median(frame)
    flat = frame.ravel()
    results = {_numba_median.select(flat, _numba._NO_MASK.ravel(), False, 2, sample=s) for s in (
        64, 65, 97, 128, 1000)}  # fmt: skip
    assert results <= {None, want}
    monkeypatch.setattr(_numba_median, "MAX_SPAN", 1)
    assert _numba_median.select(flat, _numba._NO_MASK.ravel(), False, 2) is None
    assert _numba.frame_level(frame, None, "median") == want


def test_bracket_median_all_masked_or_empty():
    frame = np.full((600, 500), np.nan, np.float32)
    assert math.isnan(_numba.frame_level(frame, None, "median"))
    frame = np.ones((600, 500), np.float32)
    assert math.isnan(_numba.frame_level(frame, np.ones(frame.shape, bool), "median"))
