"""IRAF imcombine's grow (``grow=``, ``gpuflat run --grow``): against an independent NumPy
reference written here (tests/reference.py's clipping, scipy's binary dilation by a disk, a
second combination without rejection), band invariance, the image's edges, masks and
NaNs, R = 0, the CUDA kernels (through the CPU shim and the fake device) bit for bit the
numba backend, validation, provenance, and IRAF's own imcombine where irafcl is."""

from __future__ import annotations

import os
import shutil
import subprocess

import cuda_harness as harness
import numpy as np
import pytest
from astropy.io import fits
from fake_device import FakeDevice, same
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_combine
from scipy import ndimage

import gpuflat
from gpuflat import cli
from gpuflat._config import CombineConfig
from gpuflat._frames import ArrayFrame
from gpuflat._pipeline import combine_frames
from gpuflat.backends import NumbaBackend
from gpuflat.backends._cuda import CudaBackend

SHAPE = (41, 37)
#: options of the reference (tests/reference.py's names) for CombineConfig's
CONFIG_NAMES = {"sigma_low", "sigma_high", "center", "dev", "maxiters", "method", "nlow",
                "nhigh", "min_value", "max_value", "nkeep"}  # fmt: skip


def disk(radius):
    r = int(np.floor(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return yy * yy + xx * xx <= radius * radius


def sky_stack(rng, n=7, shape=SHAPE, *, stars=4, nan=0.01, masked=0.0, edges=True):
    """Flat frames at different levels with stars (a core and wings a clipping takes in
    part), cosmic rays, NaNs; stars on the corners and edges too. Returns (stack, masks)."""
    ny, nx = shape
    levels = rng.uniform(500.0, 2000.0, n)
    flat = rng.normal(1.0, 0.01, shape)
    stack = levels[:, None, None] * flat[None] * rng.normal(1.0, 0.003, (n, ny, nx))
    yy, xx = np.mgrid[0:ny, 0:nx]
    for i in range(n):
        centres = [tuple(rng.uniform((0, 0), (ny, nx))) for _ in range(stars)]
        if edges:
            centres += [(0, 0), (ny - 1, rng.uniform(0, nx)), (rng.uniform(0, ny), nx - 1)][
                i % 3 : i % 3 + 1
            ]
        for cy, cx in centres:
            r2 = (yy - cy) ** 2 + (xx - cx) ** 2
            stack[i] += levels[i] * rng.uniform(0.05, 2.0) * np.exp(-r2 / (2 * 1.5**2))
        cr = rng.random(shape) < 0.002
        stack[i][cr] *= 4.0
    stack = stack.astype(np.float32)
    stack[rng.random(stack.shape) < nan] = np.nan
    masks = rng.random(stack.shape) < masked if masked else None
    return stack, masks


def reference_grow(stack, masks, scale, weight, radius, **opts):
    """The grow, independently: the survivors of the reference's rejection, each frame's
    rejected samples dilated by the disk (scipy), the survivors less those combined without
    rejection; with nkeep > 0 a pixel left with fewer keeps its result without the grow.
    Returns (image, uncertainty, count, rejected per frame)."""
    n, ny, nx = stack.shape
    data = stack.reshape(n, -1)
    mask = None if masks is None else masks.reshape(n, -1).astype(np.uint8)
    image0, unc0, k0, _, surv = reference_combine(
        data, mask, scale, weight, return_rejected=True, return_survivors=True, **opts
    )
    x = data.astype(np.float64)
    valid = np.isfinite(x) & (x >= opts.get("min_value", -np.inf))
    valid &= x <= opts.get("max_value", np.inf)
    if mask is not None:
        valid &= mask == 0
    rejected = (valid & ~surv).reshape(n, ny, nx)
    grown = np.stack([ndimage.binary_dilation(r, structure=disk(radius)) for r in rejected])
    final = surv & ~grown.reshape(n, -1)
    plain = {k: v for k, v in opts.items() if k in ("clip_scaled", "min_value", "max_value",
                                                    "method")}  # fmt: skip
    image, unc, k = reference_combine(
        data, (~final).astype(np.uint8), scale, weight, sigma=False, **plain
    )
    if opts.get("nkeep", 0) > 0:
        back = k < opts["nkeep"]
        image, unc, k = (np.where(back, a, b) for a, b in ((image0, image), (unc0, unc), (k0, k)))
        final = np.where(back[None], surv, final)
    shape = (ny, nx)
    return image.reshape(shape), unc.reshape(shape), k.reshape(shape), (valid & ~final).sum(1)


def combine(stack, masks, backend=None, **config):
    frames = [
        ArrayFrame(stack[i], name=f"f{i}", mask=None if masks is None else masks[i])
        for i in range(len(stack))
    ]
    return combine_frames(frames, CombineConfig(**config), backend or NumbaBackend(),
                          out_dtype=np.float64)  # fmt: skip


CASES = {
    "guide": {"sigma_low": 3.0, "sigma_high": 3.0},
    "median-iterate": {"sigma_low": 2.5, "sigma_high": 2.5, "maxiters": None, "method": "median"},
    "extrema": {"clip": "none", "nhigh": 1},
    "window-and-clip": {"nlow": 1, "nhigh": 1, "sigma_low": 2.0, "sigma_high": 2.0},
    "thresholds": {"min_value": 550.0, "max_value": 2500.0, "sigma_low": 3.0, "sigma_high": 3.0},
    "mean-std-sum": {"center": "mean", "dev": "std", "method": "sum", "sigma_high": 2.0},
    "nkeep": {"nkeep": 4, "sigma_low": 1.5, "sigma_high": 1.5},
    "weights": {"sigma_low": 3.0, "sigma_high": 3.0, "weights": (1.0, 2.0, 0.5, 1.5, 1, 3, 1)},
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("radius", [1.0, 1.5, 2.7])
def test_against_the_reference(case, radius):
    opts = CASES[case]
    rng = np.random.default_rng(len(case) * 7 + int(radius * 10))
    stack, masks = sky_stack(rng, masked=0.02 if len(case) % 2 else 0.0)
    got = combine(stack, masks, grow=radius, **opts)
    ref_opts = {k: v for k, v in opts.items() if k in CONFIG_NAMES and v is not None}
    ref_opts["sigma"] = opts.get("clip", "sigma") != "none"
    if opts.get("maxiters", 1) is None:
        ref_opts["maxiters"] = -1
    image, unc, k, rej = reference_grow(
        stack, masks, got.scales, opts.get("weights"), radius, **ref_opts
    )
    plain = combine(stack, masks, **opts)
    # the grow took samples (with nkeep most of them come back)
    assert got.rejected.sum() > plain.rejected.sum() + (0 if "nkeep" in opts else 20)
    np.testing.assert_array_equal(got.count, k)
    np.testing.assert_array_equal(got.rejected, rej)
    np.testing.assert_allclose(got.image, image, rtol=1e-12, atol=0, equal_nan=True)
    np.testing.assert_allclose(got.uncertainty, unc, rtol=1e-9, atol=1e-300, equal_nan=True)


@pytest.mark.parametrize("radius", [0.0, 0.5, 0.99])
def test_below_one_pixel_is_no_grow(radius):
    """A disk of radius < 1 holds the pixel alone: the same master, bit for bit, whether
    the grow's two combinations run (0 < R < 1) or not (R = 0)."""
    rng = np.random.default_rng(3)
    stack, masks = sky_stack(rng, masked=0.02)
    plain = combine(stack, masks, sigma_low=2.0, sigma_high=2.0)
    got = combine(stack, masks, sigma_low=2.0, sigma_high=2.0, grow=radius)
    assert same((got.image, got.uncertainty, got.count, got.rejected),
                (plain.image, plain.uncertainty, plain.count, plain.rejected))  # fmt: skip


@pytest.mark.parametrize("radius", [1.0, 2.5, 4.0])
def test_band_invariance(radius):
    """The master does not depend on the band height: bands of 1 row and up, thinner
    than the halo and thicker, and the single band, give the same bits."""
    rng = np.random.default_rng(11)
    stack, masks = sky_stack(rng, masked=0.01)
    opts = {"sigma_low": 3.0, "sigma_high": 3.0, "grow": radius}
    whole = combine(stack, masks, **opts)
    assert whole.plan.single
    rows = set()
    for mem in np.arange(26e3, 190e3, 5e3):
        try:
            got = combine(stack, masks, mem_limit=mem, **opts)
        except ValueError as exc:  # too small for a band of one row and its halo
            assert "too small" in str(exc)
            continue
        rows.add(got.plan.rows)
        assert same((got.image, got.uncertainty, got.count, got.rejected),
                    (whole.image, whole.uncertainty, whole.count, whole.rejected)), mem  # fmt: skip
    assert len(rows) >= 5 and min(rows) <= 2 and SHAPE[0] in rows, rows


def test_edges():
    """A rejection on the image's edge grows inward only, as a whole image's would."""
    stack = np.full((5, 12, 10), 1000.0, np.float32)
    stack += np.arange(5, dtype=np.float32)[:, None, None]  # a spread for the width
    stack[2, 0, 0] = 9000.0  # corner
    stack[3, 11, 4] = 9000.0  # bottom edge
    got = combine(stack, None, scale="none", sigma_low=3.0, sigma_high=3.0, grow=2.0)
    taken = np.zeros((5, 12, 10), bool)
    taken[2, :3, :3] = disk(2.0)[2:, 2:]
    taken[3, 9:, 2:7] = disk(2.0)[:3]
    np.testing.assert_array_equal(got.count, 5 - taken.sum(0))
    np.testing.assert_array_equal(got.rejected, taken.sum((1, 2)))
    keep = np.where(taken, np.nan, stack.astype(np.float64))
    np.testing.assert_allclose(got.image, np.nanmean(keep, 0), rtol=1e-13)


@pytest.mark.parametrize(("shape", "radius"), [((3, 2), 4.0), ((1, 9), 2.5), ((10, 3), 64.0),
                                             ((2, 40), 7.0)])  # fmt: skip
def test_a_radius_wider_than_the_frame(shape, radius):
    """A grow wider than the frame (up to the allowed 64) takes the whole frame's samples
    within reach, as the reference's dilation does: no failure on a few rows or columns."""
    rng = np.random.default_rng(3)
    stack, _ = sky_stack(rng, n=5, shape=shape, stars=1, nan=0.0, edges=False)
    stack[2, 0, 0] *= 5.0  # a rejection to grow
    got = combine(stack, None, grow=radius, sigma_low=3.0, sigma_high=3.0)
    image, _, k, rej = reference_grow(stack, None, got.scales, None, radius, sigma_low=3.0,
                                      sigma_high=3.0)  # fmt: skip
    assert got.rejected.sum() > 0
    np.testing.assert_array_equal(got.count, k)
    np.testing.assert_array_equal(got.rejected, rej)
    np.testing.assert_allclose(got.image, image, rtol=1e-12, equal_nan=True)


def test_masks_and_nans_do_not_grow():
    """Masked, non-finite and thresholded samples are not rejections: nothing grows from
    them (IRAF: the grow applies only to the rejection algorithms' pixels)."""
    stack = np.full((5, 9, 9), 1000.0, np.float32) + np.arange(5, dtype=np.float32)[:, None, None]
    masks = np.zeros(stack.shape, bool)
    masks[0, 4, 4] = True
    stack[1, 2, 2] = np.nan
    stack[2, 6, 6] = 5.0  # under min_value
    got = combine(stack, masks, scale="none", min_value=100.0, grow=3.0)
    want = np.full((9, 9), 5)
    want[4, 4] = want[2, 2] = want[6, 6] = 4
    np.testing.assert_array_equal(got.count, want)
    np.testing.assert_array_equal(got.rejected, 0)


def test_nkeep_keeps_the_pixel_without_the_grow():
    stack = np.full((4, 7, 7), 1000.0, np.float32) + np.arange(4, dtype=np.float32)[:, None, None]
    for i, (y, x) in enumerate([(3, 2), (3, 4), (2, 3), (4, 3)]):
        stack[i, y, x] = 8000.0  # every frame loses (3, 3) to the grow of R = 1
    got = combine(stack, None, scale="none", sigma_low=3.0, sigma_high=3.0, grow=1.0)
    assert got.count[3, 3] == 0 and np.isnan(got.image[3, 3])
    kept = combine(stack, None, scale="none", sigma_low=3.0, sigma_high=3.0, grow=1.0, nkeep=2)
    assert kept.count[3, 3] == 4 and kept.image[3, 3] == np.mean(stack[:, 3, 3], dtype=float)
    # (2, 2) loses frames 0 and 2 to the grow, and 2 >= nkeep are left
    assert kept.count[2, 2] == got.count[2, 2] == 2
    assert kept.rejected.sum() == got.rejected.sum() - 4


@pytest.mark.skipif(harness.compiler() is None, reason="no host C++ compiler (g++)")
@pytest.mark.parametrize("case", ["guide", "window-and-clip", "nkeep", "weights"])
def test_cuda_backend_is_bit_for_bit_numba(case):
    """The whole grow through the CUDA backend on the fake device (the real kernels, through
    the CPU shim; the plain path: the grow takes no host path), banded: numba's bits."""
    rng = np.random.default_rng(5)
    stack, masks = sky_stack(rng, masked=0.02)
    opts = {**CASES[case], "grow": 2.0, "mem_limit": 40e3}
    want = combine(stack, masks, **opts)
    dev = FakeDevice()
    got = combine(stack, masks, CudaBackend(dev, chunk_pixels=64), **opts)  # several chunks
    dev.assert_idle()
    assert got.backend == "cuda" and not got.plan.single
    assert same((got.image, got.uncertainty, got.count, got.rejected),
                (want.image, want.uncertainty, want.count, want.rejected))  # fmt: skip


@pytest.mark.parametrize("radius", [1.0, 2.0])
def test_with_pclip(radius):
    """The grow of pclip's rejections: against pclip's independent reference (its
    survivors, dilated, the rest combined without rejection), and the CUDA backend on the
    fake device bit for bit numba's."""
    from test_pclip import reference_pclip

    rng = np.random.default_rng(11)
    stack, masks = sky_stack(rng, masked=0.02)
    opts = {"clip": "pclip", "pclip": -0.5, "sigma_low": 2.0, "sigma_high": 2.0}
    got = combine(stack, masks, grow=radius, **opts)
    n, ny, nx = stack.shape
    data, mask = stack.reshape(n, -1), masks.reshape(n, -1).astype(np.uint8)
    *_, surv = reference_pclip(data, mask, got.scales, pclip=-0.5, sigma_low=2.0,
                               sigma_high=2.0, return_survivors=True)  # fmt: skip
    valid = np.isfinite(data) & (mask == 0)
    grown = np.stack([ndimage.binary_dilation(r, structure=disk(radius))
                      for r in (valid & ~surv).reshape(n, ny, nx)])  # fmt: skip
    final = surv & ~grown.reshape(n, -1)
    image, unc, k = reference_combine(data, (~final).astype(np.uint8), got.scales, None,
                                      sigma=False)  # fmt: skip
    assert got.rejected.sum() > combine(stack, masks, **opts).rejected.sum() + 20
    np.testing.assert_array_equal(got.count, k.reshape(ny, nx))
    np.testing.assert_array_equal(got.rejected, (valid & ~final).sum(1))
    np.testing.assert_allclose(got.image, image.reshape(ny, nx), rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(got.uncertainty, unc.reshape(ny, nx), rtol=1e-9, atol=1e-300,
                               equal_nan=True)  # fmt: skip
    dev = FakeDevice()
    cuda = combine(stack, masks, CudaBackend(dev, chunk_pixels=64), grow=radius,
                   mem_limit=40e3, **opts)  # fmt: skip
    dev.assert_idle()
    assert same((cuda.image, cuda.uncertainty, cuda.count, cuda.rejected),
                (got.image, got.uncertainty, got.count, got.rejected))  # fmt: skip


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(3, 9),
    shape=st.tuples(st.integers(1, 23), st.integers(1, 19)),
    radius=st.sampled_from([0.7, 1.0, 1.4142, 2.0, 2.3, 3.5]),
    rows=st.integers(1, 25),
    sigma=st.sampled_from([1.5, 2.5, 4.0]),
    nkeep=st.sampled_from([0, 0, 2]),
    masked=st.booleans(),
)
def test_hypothesis_reference_and_bands(seed, n, shape, radius, rows, sigma, nkeep, masked):
    """Any shape (a single row or column too), radius and band height: the reference's
    counts and rejected samples exactly, its values to rounding, and the single band's bits
    whatever the band height."""
    rng = np.random.default_rng(seed)
    stack, masks = sky_stack(rng, n=n, shape=shape, stars=1, masked=0.05 if masked else 0.0)
    opts = {"sigma_low": sigma, "sigma_high": sigma, "nkeep": nkeep}
    # no scaling: a frame of a few pixels may have none to measure a level on
    whole = combine(stack, masks, grow=radius, scale="none", **opts)
    image, unc, k, rej = reference_grow(stack, masks, whole.scales, None, radius, **opts)
    np.testing.assert_array_equal(whole.count, k)
    np.testing.assert_array_equal(whole.rejected, rej)
    np.testing.assert_allclose(whole.image, image, rtol=1e-12, atol=0, equal_nan=True)
    np.testing.assert_allclose(whole.uncertainty, unc, rtol=1e-9, atol=1e-300, equal_nan=True)
    # a band of ``rows`` rows: the memory of two such bands with their halos and little more
    per_row = shape[1] * (2 * n * (4 + masked) + 28 + 2 * n + 43)
    pass1 = shape[0] * shape[1] * 17  # planned for, though "none" measures no level
    mem = max(pass1, (rows + 2 * int(radius)) * per_row) + 1
    banded = combine(stack, masks, grow=radius, scale="none", mem_limit=mem, **opts)
    assert same((banded.image, banded.uncertainty, banded.count, banded.rejected),
                (whole.image, whole.uncertainty, whole.count, whole.rejected))  # fmt: skip


@pytest.mark.parametrize(
    ("value", "error"),
    [(-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
     (65.0, ValueError), ("2", TypeError), (True, TypeError)],
)  # fmt: skip
def test_validation(value, error):
    with pytest.raises(error, match=r"^grow must be"):
        gpuflat.combine(np.ones((3, 4, 4), np.float32), grow=value)


def test_a_run_says_when_pixels_lose_every_sample(tmp_path, capsys):
    """Every frame's rejection next to one pixel: the grow takes all its samples; the run
    says so (the product marks it: NaN, MASK = 1)."""
    stack = np.full((5, 12, 12), 1000.0, np.float32)
    stack += np.random.default_rng(1).normal(0, 1, stack.shape).astype(np.float32)
    for i, (y, x) in enumerate([(5, 6), (6, 5), (4, 5), (5, 4), (6, 6)]):
        stack[i, y, x] = 9000.0
    for i, frame in enumerate(stack):
        fits.writeto(tmp_path / f"f{i}.fits", frame,
                     fits.Header({"IMAGETYP": "FLAT", "FILTER": "V"}))  # fmt: skip
    out = tmp_path / "out"
    assert cli.main(["run", str(tmp_path), "-o", str(out), "--grow", "1.5", "--scale", "none",
                     "--sigma-low", "3", "--sigma-high", "3"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    with fits.open(out / "combined_flat_filter_V.fits") as hdul:
        empty = int(hdul["MASK"].data.sum())
        assert hdul["MASK"].data[5, 5] == 1 and np.isnan(hdul[0].data[5, 5])
    assert f"{empty} pixel(s) without a surviving sample" in err, err


def test_cli_help_validation_and_provenance(tmp_path, capsys):
    rng = np.random.default_rng(2)
    stack, _ = sky_stack(rng, n=5, shape=(20, 16))
    for i, frame in enumerate(stack):
        fits.writeto(tmp_path / f"f{i}.fits", frame,
                     fits.Header({"IMAGETYP": "FLAT", "FILTER": "V"}))  # fmt: skip
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "--grow R" in capsys.readouterr().out
    assert cli.main(["run", str(tmp_path), "-o", str(tmp_path / "out"), "--grow", "-2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--grow" in err[0] and "-2" in err[0], err
    assert cli.main(["run", str(tmp_path), "-o", str(tmp_path / "out"), "--grow", "1.5",
                     "-q", "--no-qa"]) == 0  # fmt: skip
    header = fits.getheader(tmp_path / "out" / "combined_flat_filter_V.fits")
    assert header["HIERARCH GPUFLAT GROW"] == 1.5
    lib = gpuflat.combine(sorted(tmp_path.glob("f*.fits")), grow=1.5)
    np.testing.assert_array_equal(
        fits.getdata(tmp_path / "out" / "combined_flat_filter_V.fits"), lib.image
    )


def _irafcl():
    return os.environ.get("GPUFLAT_BENCH_IRAFCL") or shutil.which("irafcl")


def _iraf_imcombine(tmp_path, stack, params):
    tmp_path = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    tmp_path.mkdir()
    names = []
    for i, frame in enumerate(stack):
        names.append(f"in{i}.fits")
        fits.writeto(tmp_path / names[-1], frame)
    (tmp_path / "inputs.lst").write_text("\n".join(names) + "\n")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "TERM": "dumb", "USER": os.environ.get("USER", "t")}
    subprocess.run([_irafcl()], input="logout\n", env=env, text=True, capture_output=True,
                   check=True, cwd=tmp_path, timeout=120)  # fmt: skip
    script = "\n".join([
        'set imtype = "fits"', "images", "immatch", "unlearn imcombine",
        f'imcombine ("@inputs.lst", "out.fits", outtype="real", logfile="", {params})',
        "logout", "",
    ])  # fmt: skip
    subprocess.run([_irafcl()], input=script, env=env, text=True, capture_output=True,
                   check=True, cwd=tmp_path, timeout=120)  # fmt: skip
    return fits.getdata(tmp_path / "out.fits").astype(np.float64)


@pytest.mark.skipif(_irafcl() is None, reason="irafcl (IRAF) is not installed")
@pytest.mark.parametrize("radius", [1.0, 1.5, 2.5])
def test_same_as_iraf_imcombine(tmp_path, radius):
    """IRAF's imcombine with grow, on rejections both make alike: minmax (nhigh = 1, every
    pixel's highest sample: the grow then takes most of the image, and IRAF's nkeep = 1
    gives a pixel left with none its value without the grow, as gpuflat's nkeep = 1 does),
    and ccdclip on a noise model with planted outliers (sky_stack's stars and cosmic rays
    are far outside 6 sigma, the rest well inside)."""
    rng = np.random.default_rng(int(radius * 10))
    stack = rng.normal(1000.0, 30.0, (5, 24, 21)).astype(np.float32)
    iraf = _iraf_imcombine(tmp_path, stack, f'combine="average", reject="minmax", nlow=0, '
                           f'nhigh=1, nkeep=1, scale="none", grow={radius}')  # fmt: skip
    ours = gpuflat.combine(stack, scale="none", clip="none", nhigh=1, nkeep=1, grow=radius)
    # the grow took samples; pixels it left none came back to their 4 (nkeep = 1)
    assert (ours.count < 4).sum() > 20 and (ours.count == 4).any()
    np.testing.assert_allclose(ours.image, iraf, rtol=2e-6)

    stack = rng.normal(1000.0, np.sqrt(25.0 + 1000.0), (7, 30, 26)).astype(np.float32)
    for i in range(7):
        ys, xs = rng.integers(0, 30, 3), rng.integers(0, 26, 3)
        stack[i, ys, xs] += 2000.0
        stack[i, 0, i] += 2000.0  # the edge
    iraf = _iraf_imcombine(tmp_path, stack, f'combine="average", reject="ccdclip", '
                           'rdnoise="5", gain="1", snoise="0", lsigma=6., hsigma=6., mclip=yes, '
                           f'nkeep=1, scale="none", grow={radius}')  # fmt: skip
    ours = gpuflat.combine(stack, scale="none", clip="ccdclip", rdnoise=5.0, noise_gain=1.0,
                           sigma_low=6.0, sigma_high=6.0, nkeep=1, grow=radius)  # fmt: skip
    assert ours.rejected.sum() > 7 * 3 * (1 + 2 * int(radius))
    np.testing.assert_allclose(ours.image, iraf, rtol=2e-6)
