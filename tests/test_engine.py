"""The core engine against an independent NumPy/astropy reference (tests/reference.py)."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData
from conftest import flat_stack, write_fits
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import reference_combine

import gpuflat
from gpuflat.backends import _numba
from gpuflat.backends._params import CENTERS, DEVS, METHODS, KernelParams

OPTIONS = [
    {},
    {"method": "median"},
    {"method": "sum"},
    {"center": "mean", "dev": "std", "sigma_low": 2.0, "sigma_high": 2.0},
    {"maxiters": -1, "sigma_low": 2.5, "sigma_high": 2.5},
    {"maxiters": 3, "center": "mean", "sigma_low": 1.5, "sigma_high": 3.0},
    {"nlow": 2, "nhigh": 1},
    {"nlow": 1, "nhigh": 1, "sigma": False},
    {"sigma": False, "min_value": 900.0, "max_value": 1500.0},
    {"sigma_low": math.inf, "sigma_high": 2.0},
    {"clip_scaled": False, "method": "median"},
    {"clip_scaled": False, "nlow": 1},
]


def kernel(data, mask=None, scale=None, weight=None, rejected=None, **opts):
    names = {"center": CENTERS, "dev": DEVS, "method": METHODS}
    params = KernelParams(**{k: names[k][v] if k in names else v for k, v in opts.items()})
    scale = np.ones(len(data)) if scale is None else np.asarray(scale, float)
    return _numba.combine_band(data, mask, scale, weight, params, rejected=rejected)


def assert_matches_reference(data, mask=None, scale=None, weight=None, **opts):
    rejected = np.zeros(len(data), np.int64)
    image, uncert, count = kernel(data, mask, scale, weight, rejected, **opts)
    ref_image, ref_uncert, ref_count, ref_rejected = reference_combine(
        data, mask, scale, weight, return_rejected=True, **opts
    )
    np.testing.assert_array_equal(count, ref_count)
    np.testing.assert_array_equal(rejected, ref_rejected)
    np.testing.assert_allclose(image, ref_image, rtol=1e-12, atol=0, equal_nan=True)
    np.testing.assert_allclose(uncert, ref_uncert, rtol=1e-9, atol=1e-300, equal_nan=True)


@pytest.mark.parametrize(
    "opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults"
)
@pytest.mark.parametrize("weighted", [False, True])
def test_kernel_matches_reference(rng, opts, weighted):
    data = flat_stack(rng, n=11, shape=(13, 17)).reshape(11, -1)
    data[rng.random(data.shape) < 0.03] = np.nan
    mask = (rng.random(data.shape) < 0.05).astype(np.uint8)
    scale = 1 / rng.uniform(500, 2000, 11)
    weight = rng.uniform(0.5, 2, 11) if weighted else None
    assert_matches_reference(data, mask, scale, weight, **opts)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 100),
    npix=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    ties=st.booleans(),
    opts=st.sampled_from(OPTIONS),
    weighted=st.booleans(),
)
def test_kernel_matches_reference_hypothesis(n, npix, seed, ties, opts, weighted):
    rng = np.random.default_rng(seed)
    data = rng.normal(1000, 20, (n, npix))
    if ties:  # many equal values: MAD = 0 at many pixels
        data = np.round(data / 50) * 50
    data[rng.random(data.shape) < 0.05] = 1e30  # extreme outliers
    data[rng.random(data.shape) < 0.05] = np.nan
    data = data.astype(np.float32)
    mask = (rng.random(data.shape) < 0.05).astype(np.uint8)
    scale = rng.uniform(0.5, 2, n)
    weight = rng.uniform(0.1, 3, n) if weighted else None
    assert_matches_reference(data, mask, scale, weight, **opts)


@pytest.mark.parametrize("opts", [{}, {"nlow": 1, "nhigh": 1}, {"maxiters": -1, "sigma_low": 2.0}])
def test_rejected_per_frame_over_chunks_and_lanes(rng, opts):
    """Several parallel chunks, partial lanes, and lanes on the per-pixel path (a -0.0 sample)
    all count rejections once: per frame equal to the reference's rejected samples."""
    n, npix = 9, 9001
    data = rng.normal(1000, 20, (n, npix)).astype(np.float32)
    data[rng.random(data.shape) < 0.02] = 1e4
    data[rng.random(data.shape) < 0.02] = np.nan
    data[:, 5:4000:97] = np.float32(-0.0)
    data[2, ::5] = 3000.0  # one frame with many outliers
    mask = (rng.random(data.shape) < 0.03).astype(np.uint8)
    assert_matches_reference(data, mask, rng.uniform(0.5, 2, n), **opts)


def test_empty_pixels_are_nan_and_masked(stack):
    stack[:, 0, 0] = np.nan
    result = gpuflat.combine(stack)
    assert result.count[0, 0] == 0 and result.mask[0, 0] and np.isnan(result.image[0, 0])
    assert not result.mask[1:, 1:].any()


def test_combine_matches_reference_end_to_end(stack):
    result = gpuflat.combine(stack)
    levels = np.median(stack.reshape(len(stack), -1).astype(np.float64), axis=1)
    np.testing.assert_array_equal(result.scales, 1 / levels)
    ref_image, _, ref_count = reference_combine(stack.reshape(len(stack), -1), scale=1 / levels)
    np.testing.assert_array_equal(result.count.ravel(), ref_count)
    np.testing.assert_allclose(result.image.ravel(), ref_image, rtol=1e-7)
    assert result.image.dtype == np.float32
    assert result.count.sum() < stack.size  # the outliers were rejected


@pytest.mark.parametrize("kind", ["list", "ccddata", "files", "uint16"])
def test_input_kinds_agree(tmp_path, stack, kind):
    if kind == "uint16":
        stack = np.round(stack).clip(0, 65535)
    expected = gpuflat.combine(stack)
    if kind == "list":
        inputs = list(stack)
    elif kind == "ccddata":
        inputs = [CCDData(a, unit="adu") for a in stack]
    else:
        dtype = np.uint16 if kind == "uint16" else np.float32
        inputs = [write_fits(tmp_path / f"f{i}.fits", a.astype(dtype)) for i, a in enumerate(stack)]
        if kind == "uint16":
            assert fits.getheader(inputs[0])["BZERO"] == 32768
    result = gpuflat.combine(inputs)
    np.testing.assert_array_equal(result.image, expected.image)
    np.testing.assert_array_equal(result.count, expected.count)


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_band_height_does_not_change_a_bit(tmp_path, rng, dtype):
    stack = flat_stack(rng, n=7, shape=(97, 53))
    stack[rng.random(stack.shape) < 0.01] = np.nan if dtype == np.float32 else 0
    paths = [write_fits(tmp_path / f"f{i}.fits", a.astype(dtype)) for i, a in enumerate(stack)]
    bpm = rng.random((97, 53)) < 0.02
    results = [gpuflat.combine(paths, mem_limit=m, mask=bpm) for m in (1e9, 4e5, 2e5, 1.2e5)]
    assert results[0].plan.nbands == 1 and results[-1].plan.nbands > 3
    for r in results[1:]:
        assert r.image.tobytes() == results[0].image.tobytes()
        assert r.uncertainty.tobytes() == results[0].uncertainty.tobytes()
        assert r.count.tobytes() == results[0].count.tobytes()


def test_bad_pixel_mask_and_ccddata_masks(stack, rng):
    bpm = np.zeros(stack.shape[1:], bool)
    bpm[3, :] = True
    masks = rng.random(stack.shape) < 0.1
    ccds = [CCDData(a, unit="adu", mask=m) for a, m in zip(stack, masks, strict=True)]
    result = gpuflat.combine(ccds, mask=bpm)
    assert (result.count[3] == 0).all() and result.mask[3].all()
    flat = stack.reshape(len(stack), -1)
    full_mask = (masks | bpm).reshape(len(stack), -1).astype(np.uint8)
    levels = [
        np.median(a[~m])
        for a, m in zip(flat.astype(np.float64), full_mask.astype(bool), strict=True)
    ]
    _, _, ref_count = reference_combine(flat, full_mask, 1 / np.array(levels))
    np.testing.assert_array_equal(result.count.ravel(), ref_count)


@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        ("mean", lambda s, e: 1 / s.reshape(len(s), -1).astype(np.float64).mean(axis=1)),
        ("none", lambda s, e: np.ones(len(s))),
        ("exptime:EXPTIME", lambda s, e: 1 / e),
        (lambda a: 2.0 / np.median(a), lambda s, e: 2 / np.median(s.reshape(len(s), -1), axis=1)),
    ],
)
def test_scale_options(tmp_path, stack, scale, expected):
    exptimes = np.arange(1.0, len(stack) + 1)
    paths = [
        write_fits(tmp_path / f"f{i}.fits", a, EXPTIME=t)
        for i, (a, t) in enumerate(zip(stack, exptimes, strict=True))
    ]
    result = gpuflat.combine(paths, scale=scale)
    np.testing.assert_allclose(result.scales, expected(stack, exptimes), rtol=1e-12)
    explicit = gpuflat.combine(paths, scale=list(result.scales))
    np.testing.assert_array_equal(explicit.image, result.image)


def test_frame_median_is_exact(rng):
    frame = rng.normal(0, 1, (64, 50)).astype(np.float32)
    assert _numba.frame_level(frame, None, "median") == np.median(frame.astype(np.float64))
    frame[0, :7] = np.nan
    assert _numba.frame_level(frame, None, "median") == np.median(
        frame[np.isfinite(frame)].astype(np.float64)
    )


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.floats(width=32, allow_nan=True, allow_infinity=True),
            st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 1000.0, 1000.0625]),
        ),
        min_size=1,
        max_size=400,
    ),
    masked=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_frame_median_hypothesis(values, masked, seed):
    """The radix-select median equals NumPy's over the finite, unmasked values: negatives,
    subnormals, ties across the histogram bins, NaN/inf, masks of any dtype, none left."""
    frame = np.array(values, np.float32)
    cols = 7 if frame.size % 7 == 0 else 1
    frame = frame.reshape(-1, cols)
    mask = None
    if masked:
        mask = np.random.default_rng(seed).random(frame.shape) < masked / 4
        mask = mask.astype([bool, np.uint8, np.int64][masked - 1])
    good = np.isfinite(frame) & (True if mask is None else mask == 0)
    want = np.median(frame[good].astype(np.float64)) if good.any() else math.nan
    got = _numba.frame_level(frame, mask, "median")
    assert (math.isnan(want) and math.isnan(got)) or got == want


def test_frame_median_large_frame(rng):
    """Millions of values, so that both passes split the frame over the threads."""
    frame = rng.normal(1000, 30, (1031, 1025)).astype(np.float32)
    frame[rng.random(frame.shape) < 0.01] = np.inf
    mask = rng.random(frame.shape) < 0.1
    good = np.isfinite(frame) & ~mask
    assert _numba.frame_level(frame, mask, "median") == np.median(frame[good].astype(np.float64))


@pytest.mark.parametrize("how", ["median", "mean"])
def test_level_with_busy_cores_is_the_same_and_restores_threads(rng, how, monkeypatch):
    """The pipeline measures a frame on the cores its reader leaves (``busy_cores``): the
    level is the reference's whatever the number of threads, and numba's thread count is
    back as it was afterwards, also after an error."""
    import numba

    from gpuflat.backends import NumbaBackend

    frame = rng.normal(1000, 30, (1031, 1025)).astype(np.float32)
    mask = rng.random(frame.shape) < 0.1
    good = frame[~mask].astype(np.float64)
    want = np.median(good) if how == "median" else math.fsum(good) / good.size
    backend = NumbaBackend()
    threads = numba.get_num_threads()
    for busy in (0, 1, threads, 99):
        got = backend.frame_level(frame, mask, how, busy_cores=busy)
        assert got == want if how == "median" else got == pytest.approx(want, rel=1e-15)
        assert got == backend.frame_level(frame, mask, how)  # bit for bit
        assert numba.get_num_threads() == threads

    def fails(*args):
        raise RuntimeError("measuring failed")

    monkeypatch.setattr(_numba, "frame_level", fails)
    with pytest.raises(RuntimeError):
        backend.frame_level(frame, mask, how, busy_cores=1)
    assert numba.get_num_threads() == threads


def test_bands_are_combined_on_the_cores_the_reader_leaves(rng, tmp_path, monkeypatch):
    """While the reader reads the next band, a band is combined with ``busy_cores=1`` (the
    last one, read already, with 0); the results are those of one band, bit for bit, and
    numba's thread count is back as it was."""
    import numba

    from gpuflat.backends import NumbaBackend

    paths = []
    for i, frame in enumerate(flat_stack(rng, n=7, shape=(120, 64))):
        paths.append(str(write_fits(tmp_path / f"f{i}.fits", frame)))
    real, seen = NumbaBackend.combine_band, []

    def combine_band(self, *args, busy_cores=0, **kwargs):
        seen.append(busy_cores)
        return real(self, *args, busy_cores=busy_cores, **kwargs)

    monkeypatch.setattr(NumbaBackend, "combine_band", combine_band)
    threads = numba.get_num_threads()
    banded = gpuflat.combine(paths, mem_limit=200e3, backend="cpu")
    assert banded.plan.nbands > 2 and seen == [1] * (banded.plan.nbands - 1) + [0]
    assert numba.get_num_threads() == threads
    whole = gpuflat.combine(paths, backend="cpu")
    assert whole.plan.nbands == 1 and seen[-1] == 0
    for a, b in ((banded.image, whole.image), (banded.uncertainty, whole.uncertainty),
                 (banded.count, whole.count)):  # fmt: skip
        np.testing.assert_array_equal(a, b)


# -- errors -------------------------------------------------------------------------------


def test_shape_mismatch_names_the_file(tmp_path, stack):
    a = write_fits(tmp_path / "a.fits", stack[0])
    b = write_fits(tmp_path / "b.fits", stack[1][:-1])
    with pytest.raises(gpuflat.ShapeMismatchError, match=r"b\.fits"):
        gpuflat.combine([a, b])


@pytest.mark.parametrize("level", [0.0, -5.0, np.nan])
def test_bad_level_names_the_file(tmp_path, stack, level):
    bad = np.full_like(stack[0], level)
    paths = [write_fits(tmp_path / "good.fits", stack[0]), write_fits(tmp_path / "zero.fits", bad)]
    with pytest.raises(gpuflat.BadLevelError, match=r"zero\.fits"):
        gpuflat.combine(paths)


def test_empty_input():
    with pytest.raises(gpuflat.NoFramesError):
        gpuflat.combine([])


def test_truncated_file_is_named(tmp_path, stack):
    path = write_fits(tmp_path / "cut.fits", stack[0])
    raw = Path(path).read_bytes()
    Path(path).write_bytes(raw[: len(raw) - 4000])
    with pytest.raises(gpuflat.FrameReadError, match=r"cut\.fits"):
        gpuflat.combine([path, path])


def test_non_image_hdu_and_garbage(tmp_path):
    table = tmp_path / "table.fits"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]
    ).writeto(table)
    garbage = tmp_path / "garbage.fits"
    garbage.write_text("not a fits file")
    for path in (table, garbage):
        with pytest.raises(gpuflat.FrameReadError, match=path.name):
            gpuflat.combine([path])
    with pytest.raises(gpuflat.FrameReadError, match=r"missing\.fits"):
        gpuflat.combine([tmp_path / "missing.fits"])


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"method": "mode"}, ValueError, "method"),
        ({"sigma_low": -1}, ValueError, "sigma_low"),
        ({"sigma_high": "3"}, TypeError, "sigma_high"),
        ({"maxiters": 0}, ValueError, "maxiters"),
        ({"nlow": 1.5}, TypeError, "nlow"),
        ({"scale": "exptime"}, ValueError, "scale"),
        ({"scale": [1.0, -2.0]}, ValueError, "scale"),
        ({"mem_limit": 0}, ValueError, "mem_limit"),
        ({"min_value": 5, "max_value": 1}, ValueError, "min_value"),
        ({"backend": "gpu"}, ValueError, "backend"),
        ({"weights": [1.0]}, ValueError, "weights"),
        ({"scale": [1.0]}, ValueError, "scale"),
        ({"mem_limit": 1000}, ValueError, "mem_limit"),
    ],
)
def test_parameter_errors_name_the_parameter(stack, kwargs, exc, words):
    with pytest.raises(exc, match=words):
        gpuflat.combine(stack, **kwargs)


def test_cuda_backend_is_a_clear_error_without_a_gpu(stack):
    ok, _ = gpuflat.backends.cuda_status()
    if ok:
        pytest.skip("a GPU is present")
    with pytest.raises(gpuflat.BackendUnavailableError, match="cuda"):
        gpuflat.combine(stack, backend="cuda")


MEMORY_SCRIPT = """
import sys, numpy as np, gpuflat

def status(key):  # bytes; this process's own figures (ru_maxrss would include the parent's)
    line = next(ln for ln in open("/proc/self/status") if ln.startswith(key + ":"))
    return int(line.split()[1]) * 1024

paths = sys.argv[1:-1]; limit = float(sys.argv[-1])
# compile and warm up: the same combination (the kernels are compiled per size class of
# the stack, and the frame median's for frames this large)
gpuflat.combine(paths, mem_limit=limit)
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak (VmHWM) to the current resident size
r = gpuflat.combine(paths, mem_limit=limit)
print(before, status("VmHWM"), r.plan.nbands)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_memory_stays_within_limit_plus_outputs(tmp_path, rng):
    n, shape, limit = 24, (1024, 768), 25e6  # a 75 MB stack, 3x the limit
    frame = flat_stack(rng, n=1, shape=shape)[0]
    paths = [write_fits(tmp_path / f"f{i}.fits", frame * (1 + i / 10)) for i in range(n)]
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, *paths, str(limit)],
        capture_output=True,
        text=True,
        check=True,
    )
    before, peak, nbands = (int(v) for v in out.stdout.split())
    outputs = shape[0] * shape[1] * (4 + 4 + 4 + 1)  # image, uncertainty, count, mask
    # documented in docs/usage.md (Memory): thread stacks, allocator slack, astropy headers
    overhead = 20e6
    assert nbands > 1
    # the stack streamed through memory: the peak reflects the bands, not the 75 MB stack
    assert peak - before > limit / 4, (peak - before) / 1e6
    assert peak - before < limit + outputs + overhead, (peak - before) / 1e6
