"""ccdclip (IRAF's noise-model clipping) and nkeep, twin-backend: the numba backend (block
path and its literal per-pixel path) and the CUDA kernels run on the CPU through the shim,
bit for bit, and both against the independent NumPy reference (tests/reference.py)."""

from __future__ import annotations

import math

import cuda_harness as harness
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_combine
from test_cuda_kernels import assert_identical
from test_numba_fast import per_pixel

from gpuflat.backends import _numba
from gpuflat.backends._params import CENTERS, DEVS, METHODS, KernelParams

needs_cxx = pytest.mark.skipif(harness.compiler() is None, reason="no host C++ compiler (g++)")

NAMES = {"center": CENTERS, "dev": DEVS, "method": METHODS}

CASES = {
    "ccdclip": {"ccdclip": True, "sigma_low": 3.0, "sigma_high": 3.0},
    "ccdclip-tight-median": {
        "ccdclip": True, "sigma_low": 1.0, "sigma_high": 1.0, "method": "median",
    },
    "ccdclip-mean-iterate": {
        "ccdclip": True, "center": "mean", "maxiters": -1, "sigma_low": 1.5, "sigma_high": 2.0,
    },
    "ccdclip-one-sided": {"ccdclip": True, "sigma_low": math.inf, "sigma_high": 0.5, "maxiters": 3},
    "ccdclip-raw-sum": {"ccdclip": True, "clip_scaled": False, "method": "sum", "sigma_low": 1.0},
    "ccdclip-nkeep": {"ccdclip": True, "nkeep": 4, "sigma_low": 0.5, "sigma_high": 0.5},
    "ccdclip-nkeep-neg": {
        "ccdclip": True, "nkeep": -2, "sigma_low": 0.3, "sigma_high": 0.3, "maxiters": -1,
        "method": "median",
    },
    "ccdclip-window": {"ccdclip": True, "nlow": 1, "nhigh": 1, "nkeep": 3, "sigma_low": 0.5},
    "nkeep": {"nkeep": 5, "sigma_low": 1.0, "sigma_high": 1.0},
    "nkeep-asym": {"nkeep": 6, "sigma_low": 0.2, "sigma_high": 3.0, "method": "median"},
    "nkeep-mean-std": {
        "nkeep": 3, "center": "mean", "dev": "std", "sigma_low": 0.5, "sigma_high": 0.5,
        "maxiters": -1,
    },
    "nkeep-neg": {"nkeep": -1, "sigma_low": 0.5, "sigma_high": 0.5, "method": "sum"},
    "nkeep-raw": {"nkeep": 4, "clip_scaled": False, "sigma_low": 0.7, "method": "median"},
    "nkeep-window": {"nkeep": 20, "nlow": 2, "nhigh": 1, "sigma_low": 0.5, "sigma_high": 0.5},
    "nkeep-no-clip": {"nkeep": 5, "sigma": False},
}  # fmt: skip


def noise_model(rng, n, kind):
    if kind == "equal":
        return {"rdnoise": (5.0,) * n, "gain": (2.0,) * n, "snoise": (0.0,) * n}
    return {
        "rdnoise": tuple(rng.uniform(2.0, 12.0, n)),
        "gain": tuple(rng.uniform(0.5, 4.0, n)),
        "snoise": tuple(rng.choice([0.0, 0.01, 0.05], n)),
    }


def params_of(opts, noise):
    kp = {k: NAMES[k][v] if k in NAMES else v for k, v in opts.items()}
    if opts.get("ccdclip"):
        kp |= noise
    return KernelParams(**{k: int(v) if isinstance(v, bool) else v for k, v in kp.items()})


def band(rng, n, npix, *, ties, nan=0.05, outliers=0.05):
    """Raw flats at different levels (scale 1/level), NaN, outliers; ``ties``: few values."""
    levels = rng.uniform(500.0, 2000.0, n)
    data = levels[:, None] * rng.normal(1.0, 0.02, (n, npix))
    if ties:
        data = np.round(data / 25.0) * 25.0
    data[rng.random(data.shape) < outliers] *= 3.0
    data = data.astype(np.float32)
    data[rng.random(data.shape) < nan] = np.nan
    return data, 1.0 / levels


def check_twins(data, mask, scale, weight, opts, noise, *, shim=True, reference=True):
    params = params_of(opts, noise)
    n = data.shape[0]
    rejected = np.zeros(n, np.int64)
    got = _numba.combine_band(data, mask, scale, weight, params, rejected=rejected)
    want, want_rejected = per_pixel(data, mask, scale, weight, params)
    assert_identical(got, want, f"numba block vs per-pixel {opts}")
    np.testing.assert_array_equal(rejected, want_rejected)
    if shim and harness.compiler() is not None:
        for kernel in (None, "gpuflat_combine_xn"):
            rej = np.zeros(n, np.uint64)
            out = harness.combine_band(
                data, mask, scale, weight, params, kernel=kernel, pieces=2, rejected=rej
            )
            assert_identical(out, got, f"shim {kernel} vs numba {opts}")
            np.testing.assert_array_equal(rej.astype(np.int64), rejected)
    if reference:
        ref = reference_combine(
            data, mask, scale, weight, return_rejected=True,
            **{k: v for k, v in opts.items()}, **(noise if opts.get("ccdclip") else {}),
        )  # fmt: skip
        np.testing.assert_array_equal(got[2], ref[2], err_msg=f"count {opts}")
        np.testing.assert_array_equal(rejected, ref[3], err_msg=f"rejected {opts}")
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-12, atol=0, equal_nan=True)
        np.testing.assert_allclose(got[1], ref[1], rtol=1e-9, atol=1e-300, equal_nan=True)
    return got


@needs_cxx
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("n", [2, 3, 5, 9, 16, 17, 40])
def test_twins_and_reference(name, n):
    rng = np.random.default_rng(n * 97 + len(name))
    npix = 150
    data, scale = band(rng, n, npix, ties=n % 2 == 1)
    mask = (rng.random(data.shape) < 0.05).astype(np.uint8) if n % 3 else None
    weight = rng.uniform(0.5, 2.0, n) if n % 4 == 1 else None
    noise = noise_model(rng, n, "equal" if n % 2 else "mixed")
    check_twins(data, mask, scale, weight, CASES[name], noise)


@needs_cxx
@pytest.mark.parametrize("name", CASES)
def test_ties_equal_scales(name):
    """Few distinct values and one scale: ties in the clip values and in the distances to
    the centre, so nkeep's tie rule (frame order) decides."""
    rng = np.random.default_rng(len(name))
    n = 8
    data = rng.choice(np.array([990.0, 1000.0, 1010.0, 1020.0, 1100.0], np.float32), (n, 300))
    data[rng.random(data.shape) < 0.05] = np.nan
    scale = np.full(n, 1e-3)
    mask = (rng.random(data.shape) < 0.05).astype(np.uint8)
    check_twins(data, mask, scale, None, CASES[name], noise_model(rng, n, "equal"))


def test_nkeep_rule_by_hand():
    """Five frames 1, 2, 3, 4, 10 about the median 3: 0.1 sigma clips all but 3; nkeep=3 adds
    the two nearest clipped (2 and 4, distance 1); nkeep=2 adds one of them: the tie goes
    to the lower frame index, frame 1's 2; nkeep=-1 rejects at most one (the 10)."""
    data = np.array([[1.0], [2.0], [3.0], [4.0], [10.0]], np.float32)
    scale = np.ones(5)
    base = {"sigma_low": 0.1, "sigma_high": 0.1}  # (astropy reads 0 as "use sigma")
    _, _, count = check_twins(data, None, scale, None, base, {})
    assert count[0] == 1
    image, _, count = check_twins(data, None, scale, None, base | {"nkeep": 3}, {})
    assert count[0] == 3 and image[0] == 3.0
    image, _, count = check_twins(data, None, scale, None, base | {"nkeep": 2}, {})
    assert count[0] == 2 and image[0] == 2.5
    image, _, count = check_twins(data, None, scale, None, base | {"nkeep": -1}, {})
    assert count[0] == 4 and image[0] == 2.5  # at most one rejected: 10 stays out


def test_ccdclip_width_by_hand():
    """One scale, gain 1, no read noise: sigma = sqrt(c) in raw units. Values 100, 100,
    100, 115, 131 (median 100, sigma 10): 2-sigma keeps 115 and drops 131."""
    data = np.array([[100.0], [100.0], [100.0], [115.0], [131.0]], np.float32)
    noise = {"rdnoise": (0.0,) * 5, "gain": (1.0,) * 5, "snoise": (0.0,) * 5}
    opts = {"ccdclip": True, "sigma_low": 2.0, "sigma_high": 2.0}
    _, _, count = check_twins(data, None, np.ones(5), None, opts, noise)
    assert count[0] == 4
    # the same frames scaled by 1/100: the width scales too, the survivors are the same
    _, _, count = check_twins(data, None, np.full(5, 0.01), None, opts, noise)
    assert count[0] == 4
    # rdnoise 20 e- at gain 1: sigma = sqrt(400 + 100) = 22.4, 131 stays
    noise["rdnoise"] = (20.0,) * 5
    _, _, count = check_twins(data, None, np.ones(5), None, opts, noise)
    assert count[0] == 5


def test_fast_path_declines():
    """The guide's parameters with ccdclip or nkeep must not take the fast path: the
    block/per-pixel results equal the literal per-pixel path on a wide band."""
    rng = np.random.default_rng(5)
    n = 12
    data, scale = band(rng, n, 5000, ties=False, nan=0.01)
    noise = noise_model(rng, n, "mixed")
    for opts in ({"ccdclip": True}, {"nkeep": 11, "sigma_low": 1.0, "sigma_high": 1.0}):
        check_twins(data, None, scale, None, opts, noise, shim=False)


@needs_cxx
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 40),
    npix=st.integers(1, 70),
    seed=st.integers(0, 2**32 - 1),
    ties=st.booleans(),
    name=st.sampled_from(sorted(CASES)),
    maxiters=st.sampled_from([None, 1, 2, -1]),
    nkeep=st.sampled_from([None, 0, 1, 3, -1, -3, 50]),
    use_mask=st.booleans(),
)
def test_hypothesis(n, npix, seed, ties, name, maxiters, nkeep, use_mask):
    rng = np.random.default_rng(seed)
    data, scale = band(rng, n, npix, ties=ties, nan=0.1, outliers=0.1)
    mask = (rng.random(data.shape) < 0.1).astype(np.uint8) if use_mask else None
    opts = dict(CASES[name])
    if maxiters is not None:
        opts["maxiters"] = maxiters
    if nkeep is not None:
        opts["nkeep"] = nkeep
    check_twins(data, mask, scale, None, opts, noise_model(rng, n, "mixed"))


# -- options: library, config file, command line ---------------------------------------------


def test_combine_api_numbers_and_keywords(tmp_path):
    """Numbers and header keywords give the same result; a missing keyword names the file."""
    from conftest import flat_stack, write_fits

    import gpuflat

    rng = np.random.default_rng(3)
    frames = flat_stack(rng, n=7, shape=(20, 30), outliers=0.05)
    paths = [
        write_fits(tmp_path / f"f{i}.fits", f, RDNOISE=6.0, GAIN=1.5) for i, f in enumerate(frames)
    ]
    opts = {"clip": "ccdclip", "sigma_low": 3.0, "sigma_high": 3.0, "nkeep": 4}
    by_key = gpuflat.combine(paths, rdnoise="rdnoise", noise_gain="GAIN", snoise=0.01, **opts)
    by_num = gpuflat.combine(paths, rdnoise=6.0, noise_gain=1.5, snoise=0.01, **opts)
    np.testing.assert_array_equal(by_key.image, by_num.image)
    np.testing.assert_array_equal(by_key.count, by_num.count)
    assert by_key.count.min() >= 4 and by_key.count.max() <= 7
    scale = 1.0 / np.median(frames.reshape(7, -1), axis=1)
    ref = reference_combine(
        frames.reshape(7, -1), None, scale, ccdclip=True, rdnoise=(6.0,) * 7, gain=(1.5,) * 7,
        snoise=(0.01,) * 7, nkeep=4, sigma_low=3.0, sigma_high=3.0,
    )  # fmt: skip
    np.testing.assert_array_equal(by_num.count.ravel(), ref[2])
    with pytest.raises(gpuflat.GpuflatError, match=r"f0\.fits: no RDN keyword"):
        gpuflat.combine(paths, rdnoise="RDN", **opts)
    # the options do nothing without ccdclip (nkeep still applies to sigma clipping)
    plain = gpuflat.combine(paths, rdnoise="RDN", sigma_low=3.0, sigma_high=3.0)
    assert plain.count.max() == 7


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"clip": "ccdclip", "rdnoise": -1.0}, ValueError, "rdnoise must be a finite number >= 0"),
        (
            {"clip": "ccdclip", "noise_gain": 0},
            ValueError,
            "noise_gain must be a finite number > 0",
        ),
        ({"clip": "ccdclip", "snoise": "1 2"}, ValueError, "snoise must be a number >= 0"),
        ({"clip": "ccdclip", "noise_gain": float("nan")}, ValueError, "noise_gain"),
        ({"nkeep": 1.5}, TypeError, "nkeep must be an integer"),
        ({"clip": "iraf"}, ValueError, "'ccdclip'"),
    ],
)
def test_option_errors(kwargs, exc, words):
    from gpuflat._config import CombineConfig

    with pytest.raises(exc, match=words):
        CombineConfig(**kwargs)


def test_bad_header_value_names_the_file():
    from gpuflat._config import CombineConfig
    from gpuflat.errors import GpuflatError

    config = CombineConfig(clip="ccdclip", noise_gain="GAIN")
    assert config.noise_model([{"GAIN": 2}, {"GAIN": 3.0}], ["a", "b"]) == (
        (0.0, 0.0), (2.0, 3.0), (0.0, 0.0),
    )  # fmt: skip
    with pytest.raises(GpuflatError, match=r"b: GAIN = 0 is not a valid noise_gain"):
        config.noise_model([{"GAIN": 2}, {"GAIN": 0}], ["a", "b"])
    with pytest.raises(GpuflatError, match=r"a: GAIN = 'x'"):
        config.noise_model([{"GAIN": "x"}], ["a"])


def test_cli_and_config_file(tmp_path):
    from astropy.io import fits
    from conftest import flat_stack, write_fits

    from gpuflat.cli import main
    from gpuflat.farm import build_options

    rng = np.random.default_rng(4)
    frames = flat_stack(rng, n=6, shape=(16, 16), outliers=0.05)
    for i, f in enumerate(frames):
        write_fits(tmp_path / f"f{i}.fits", f, IMAGETYP="FLAT", FILTER="R", RDNOISE=4.0)
    out = tmp_path / "out"
    argv = ["run", str(tmp_path), "-o", str(out), "-q", "--clip", "ccdclip", "--rdnoise",
            "RDNOISE", "--noise-gain", "2", "--snoise", "0.01", "--nkeep", "3"]  # fmt: skip
    assert main(argv) == 0
    header = fits.getheader(out / "combined_flat_filter_R.fits")
    assert header["HIERARCH GPUFLAT CLIP"] == "ccdclip"
    assert header["HIERARCH GPUFLAT RDNOISE"] == "RDNOISE"
    assert header["HIERARCH GPUFLAT NKEEP"] == 3
    toml = tmp_path / "farm.toml"
    toml.write_text('clip = "ccdclip"\nrdnoise = 4.5\nnoise-gain = "GAIN"\nnkeep = -2\n')
    opts = build_options({}, str(toml))
    assert opts.combine.rdnoise == 4.5 and opts.combine.noise_gain == "GAIN"
    assert opts.combine.nkeep == -2
    assert main(["run", str(tmp_path), "-o", str(out), "--clip", "ccdclip", "--snoise", "-1"]) == 2


@needs_cxx
@pytest.mark.parametrize(
    "opts",
    [
        {"ccdclip": True, "sigma_low": 2.0, "sigma_high": 2.0},
        {"ccdclip": True, "sigma_low": 1.0, "sigma_high": 1.5, "method": "median"},
        {"ccdclip": True, "center": "mean", "maxiters": -1, "sigma_low": 1.0},
        {"ccdclip": True, "clip_scaled": False, "sigma_low": 1.5, "method": "sum"},
        {"ccdclip": True, "nkeep": 3, "sigma_low": 0.5, "sigma_high": 0.5},
    ],
)
def test_ccdclip_centre_at_or_below_zero(opts):
    """Bias-like data whose centre is at, near or below 0 (in raw or scaled units): the
    noise model's signal term is taken as 0 there (no negative variance, no NaN width);
    numba, the CUDA kernels on the CPU and the NumPy reference agree."""
    rng = np.random.default_rng(2024)
    n, npix = 9, 240
    centres = np.linspace(-40.0, 15.0, npix)
    centres[:20] = 0.0
    data = centres + rng.normal(0.0, 3.0, (n, npix))
    data[:, 20:40] = rng.normal(0.0, 0.4, (n, 20))  # a centre within a hair of 0
    data[rng.random(data.shape) < 0.08] += 60.0  # outliers
    data[rng.random(data.shape) < 0.03] -= 60.0
    data = data.astype(np.float32)
    data[0, 5] = data[3, 7] = np.nan
    mask = (rng.random(data.shape) < 0.03).astype(np.uint8)
    for noise in (
        {"rdnoise": (2.0,) * n, "gain": (1.0,) * n, "snoise": (0.0,) * n},
        {"rdnoise": tuple(rng.uniform(1.0, 4.0, n)), "gain": tuple(rng.uniform(0.5, 3.0, n)),
         "snoise": tuple(rng.choice([0.0, 0.05], n))},
    ):  # fmt: skip
        for scale in (np.ones(n), rng.uniform(0.5, 2.0, n)):
            got = check_twins(data, mask, scale, None, opts, noise)
            assert np.isfinite(got[0][np.asarray(got[2]) > 0]).all()
