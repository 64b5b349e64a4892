"""pclip, IRAF imcombine's percentile clipping (docs/kernel-contract.md, step 5d): the numba
backend (block path and its literal per-pixel path) and the CUDA kernels on the CPU shim,
bit for bit, against an independent NumPy reference written here from IRAF's algorithm
(icombine.x's pclip in pixels, icpclip's median, percentile pixel and rejection), by hand,
and against IRAF's own imcombine where ``irafcl`` is installed; the options (library,
config file, command line), their refusals and the product's provenance."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import warnings

import cuda_harness as harness
import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import mad_std
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cuda_kernels import assert_identical
from test_numba_fast import per_pixel

from gpuflat.backends import _numba
from gpuflat.backends._params import METHODS, KernelParams

# -- the reference ---------------------------------------------------------------------------


def iraf_pixels(pclip, nimages):
    """IRAF icombine.x: the pclip parameter as a number of pixels, once for the whole stack
    (``i = nimages / 2.`` into an integer; fractions of it, truncated; at least 1)."""
    i = int(nimages / 2.0)
    p = pclip * i if abs(pclip) < 1.0 else pclip
    if p < 0.0:
        return min(-1, max(-i, int(p)))
    return max(1, min(i, int(p)))


def reference_pclip(data, mask=None, scale=None, weight=None, *, pclip=-0.5, sigma_low=3.0,
                    sigma_high=3.0, nkeep=0, nlow=0, nhigh=0, min_value=-np.inf,
                    max_value=np.inf, method="average", clip_scaled=True,
                    return_survivors=False):  # fmt: skip
    """(image, uncert, count, rejected per frame) of ``data[n, npix]``. Per pixel, as
    icpclip: the ``n1`` samples of the window sorted, IRAF's 1-based ``n2 = 1 + n1 / 2`` and
    percentile pixel ``n3``, the median, ``sigma = t (d[n3] - median)``, a sample rejected
    when its residual over sigma reaches lsigma / hsigma; nothing when ``n1 < 3`` or sigma
    is 0. nkeep: the rejected nearest the median come back, ties by frame index.
    ``return_survivors``: the survivors (bool [n, npix]) too, last."""
    n, npix = data.shape
    x = data.astype(np.float64)
    scale = np.ones(n) if scale is None else np.asarray(scale, np.float64)
    valid = np.isfinite(x) & (x >= min_value) & (x <= max_value)
    if mask is not None:
        valid &= mask == 0
    y = x * scale[:, None]
    v = y if clip_scaled else x
    p = iraf_pixels(pclip, n)
    survive = np.zeros((n, npix), bool)
    for col in range(npix):
        frames = np.flatnonzero(valid[:, col])
        order = frames[np.argsort(v[frames, col], kind="stable")]
        window = order[nlow : max(nlow, order.size - nhigh)]
        d = v[window, col]
        n1 = d.size
        keep = np.ones(n1, bool)
        med = 0.0
        if n1 >= 3:
            n2 = 1 + n1 // 2
            even = n1 % 2 == 0
            med = (d[n2 - 2] + d[n2 - 1]) / 2.0 if even else d[n2 - 1]
            if p < 0:
                n3 = max(1, n2 - 1 + p) if even else max(1, n2 + p)
                sigma = -(d[n3 - 1] - med)
            else:
                n3 = min(n1, n2 + p)
                sigma = d[n3 - 1] - med
            if sigma != 0.0:
                with np.errstate(all="ignore"):
                    if not math.isinf(sigma_low):
                        keep &= ~((med - d) / sigma >= sigma_low)
                    if not math.isinf(sigma_high):
                        keep &= ~((d - med) / sigma >= sigma_high)
        if nkeep and n1:
            want = min(nkeep, n1) if nkeep > 0 else max(0, n1 + nkeep)
            need = want - int(keep.sum())
            if need > 0:
                cand = sorted(np.flatnonzero(~keep), key=lambda j: (abs(d[j] - med), window[j]))
                keep[cand[:need]] = True
        survive[window[keep], col] = True
    k = survive.sum(axis=0)
    ys = np.where(survive, y, np.nan)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        if method == "median":
            image = np.nanmedian(ys, axis=0)
            uncert = mad_std(ys, axis=0, ignore_nan=True) / np.sqrt(k)
        else:
            sd = np.nanstd(ys, axis=0)
            w = np.ones(n) if weight is None else np.asarray(weight, np.float64)
            total = np.nansum(ys * w[:, None], axis=0)
            norm = np.sum(np.where(survive, w[:, None], 0.0), axis=0)
            image = total / norm if method == "average" else total
            uncert = sd / np.sqrt(k) if method == "average" else sd * np.sqrt(k)
    image = np.where(k == 0, np.nan, image)
    uncert = np.where(k == 0, np.nan, uncert)
    out = image, uncert, k, (valid & ~survive).sum(axis=1)
    return (*out, survive) if return_survivors else out


def params_of(opts):
    kp = {k: METHODS[v] if k == "method" else v for k, v in opts.items()}
    if "clip_scaled" in kp:
        kp["clip_scaled"] = int(kp["clip_scaled"])
    return KernelParams(**kp)


def check(data, mask, scale, weight, opts, *, shim=True):
    """Numba block vs per-pixel vs the shim's kernels (bits), all against the reference
    (3 sigma, IRAF's, unless ``opts`` say otherwise)."""
    opts = {"sigma_low": 3.0, "sigma_high": 3.0} | opts
    params = params_of(opts)
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
    ref = reference_pclip(data, mask, scale, weight, **opts)
    np.testing.assert_array_equal(got[2], ref[2], err_msg=f"count {opts}")
    np.testing.assert_array_equal(rejected, ref[3], err_msg=f"rejected {opts}")
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-12, atol=0, equal_nan=True)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-9, atol=1e-300, equal_nan=True)
    return got


CASES = {
    "default": {"pclip": -0.5},
    "above": {"pclip": 0.5, "sigma_low": 2.0, "sigma_high": 2.0},
    "below-pixels": {"pclip": -2.0, "sigma_low": 1.5, "sigma_high": 2.5, "method": "median"},
    "above-pixels": {"pclip": 3.0, "sigma_low": 1.0, "sigma_high": 1.0, "method": "sum"},
    "extreme": {"pclip": -0.99, "sigma_low": 0.5, "sigma_high": 0.5},
    "one-sided": {"pclip": 1.0, "sigma_low": math.inf, "sigma_high": 0.7},
    "raw": {"pclip": -0.5, "clip_scaled": False, "sigma_low": 1.0, "method": "median"},
    "window": {"pclip": -0.3, "nlow": 1, "nhigh": 1, "sigma_low": 1.0, "sigma_high": 1.0},
    "thresholds": {"pclip": 2.0, "min_value": 480.0, "max_value": 2500.0, "sigma_low": 1.0},
    "nkeep": {"pclip": -0.5, "nkeep": 4, "sigma_low": 0.3, "sigma_high": 0.3},
    "nkeep-neg": {"pclip": 0.5, "nkeep": -1, "sigma_low": 0.2, "sigma_high": 0.2},
}


def band(rng, n, npix, *, ties, nan=0.05, outliers=0.08):
    """Flats at different levels (scale 1/level), NaN, outliers; ``ties``: few values."""
    levels = rng.uniform(500.0, 2000.0, n)
    data = levels[:, None] * rng.normal(1.0, 0.02, (n, npix))
    if ties:
        data = np.round(data / 25.0) * 25.0
    data[rng.random(data.shape) < outliers] *= rng.choice([0.5, 3.0])
    data = data.astype(np.float32)
    data[rng.random(data.shape) < nan] = np.nan
    return data, 1.0 / levels


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 11, 16, 17, 30])
def test_twins_and_reference(name, n):
    rng = np.random.default_rng(n * 101 + len(name))
    data, scale = band(rng, n, 160, ties=n % 2 == 1)
    mask = (rng.random(data.shape) < 0.05).astype(np.uint8) if n % 3 else None
    weight = rng.uniform(0.5, 2.0, n) if n % 4 == 1 else None
    check(data, mask, scale, weight, CASES[name])


@pytest.mark.parametrize("name", CASES)
def test_ties_equal_scales(name):
    """Few distinct values, one scale: the percentile pixel often equals the median (no
    clipping) and the samples tie with each other and at the bounds."""
    rng = np.random.default_rng(len(name))
    n = 9
    data = rng.choice(np.array([990.0, 1000.0, 1010.0, 1020.0, 1100.0], np.float32), (n, 400))
    data[rng.random(data.shape) < 0.05] = np.nan
    mask = (rng.random(data.shape) < 0.05).astype(np.uint8)
    check(data, mask, np.full(n, 1e-3), None, CASES[name])


def _one_pixel(values, **opts):
    data = np.array(values, np.float32)[:, None]
    return check(data, None, np.ones(data.shape[0]), None, opts)


def test_by_hand_even_and_odd():
    """Ten frames 100 104 106 108 109 111 112 114 116 130 (median 110). pclip -0.5: IRAF's
    help says the 3rd pixel (106): sigma 4, 3 sigma clips 130 alone. pclip 1: the 7th
    (112), sigma 2: 104 and 116 sit at 3 sigma and go too (IRAF rejects at equality), 100
    and 130 beyond; pclip -1 is the 4th (108), the same. pclip -0.9: -4.5 -> 4 pixels below
    the lower middle value, the 1st (100), sigma 10: nothing goes. Without 130 (nine
    frames, median 109): pclip -0.5 -> 2 pixels below, the 3rd (106), sigma 3: 100 sits at
    3 sigma and goes; pclip 0.5 the 7th (112), the same."""
    ten = [104, 130, 106, 100, 108, 109, 111, 112, 114, 116]
    image, _, count = _one_pixel(ten, pclip=-0.5)
    assert count[0] == 9 and image[0] == pytest.approx(980 / 9)
    for pclip in (1.0, -1.0):
        image, _, count = _one_pixel(ten, pclip=pclip)
        assert count[0] == 6 and image[0] == 110.0
    assert _one_pixel(ten, pclip=-0.9)[2][0] == 10
    nine = [v for v in ten if v != 130]
    for pclip in (-0.5, 0.5):
        image, _, count = _one_pixel(nine, pclip=pclip)
        assert count[0] == 8 and image[0] == (sum(nine) - 100) / 8


def test_by_hand_small_stacks():
    """One or two samples are never clipped (IRAF's MINCLIP is 3), even at 0 sigma; three
    (1, 2, 100): pclip -0.5 of 3 frames is 1 pixel below, the lowest, sigma 1: 100 goes."""
    for values in ([5.0], [1.0, 100.0]):
        for pclip in (-0.5, 0.5, -1.0, 1.0):
            count = _one_pixel(values, pclip=pclip, sigma_low=0.0, sigma_high=0.0)[2]
            assert count[0] == len(values)
    image, _, count = _one_pixel([100.0, 1.0, 2.0], pclip=-0.5)
    assert count[0] == 2 and image[0] == 1.5
    # +0.5: 1 pixel above the median, 100 itself: sigma 98, nothing goes
    assert _one_pixel([100.0, 1.0, 2.0], pclip=0.5)[2][0] == 3


def test_by_hand_offset_counts_all_frames():
    """The percentile pixel comes from the number of frames, not of valid samples: ten
    frames, five NaN, pclip -0.5 is 2 pixels below the median of the five left (100 104
    106 108 120: the 1st, 100), sigma 6; at 2 sigma 120 goes (100 stays, at 1 sigma). With
    the offset taken from five samples (1 pixel: 104, sigma 2) 100 would go too."""
    values = [100.0, 104.0, 106.0, 108.0, 120.0] + [math.nan] * 5
    image, _, count = _one_pixel(values, pclip=-0.5, sigma_low=2.0, sigma_high=2.0)
    assert count[0] == 4 and image[0] == 104.5


def test_pclip_offset_is_irafs():
    """The host's offset against the transcription of icombine.x above, every stack size
    and a spread of parameters."""
    from gpuflat.backends._params import pclip_offset

    for n in range(2, 80):
        for pclip in (-0.99, -0.75, -0.5, -0.3, -0.1, 0.1, 0.5, 0.9, -1, 1, -2, 3, -7, 40):
            assert pclip_offset(pclip, n) == iraf_pixels(pclip, n), (n, pclip)


def test_fast_path_declines():
    """The guide's parameters but pclip: not the fast path, on a wide band."""
    rng = np.random.default_rng(5)
    data, scale = band(rng, 12, 5000, ties=False, nan=0.01)
    check(data, None, scale, None, {"pclip": -0.5, "sigma_low": 5.0, "sigma_high": 5.0},
          shim=False)  # fmt: skip


@pytest.mark.skipif(harness.compiler() is None, reason="no host C++ compiler (g++)")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 40),
    npix=st.integers(1, 70),
    seed=st.integers(0, 2**32 - 1),
    ties=st.booleans(),
    name=st.sampled_from(sorted(CASES)),
    pclip=st.sampled_from([None, -0.5, 0.5, -0.2, -1.0, 2.0, -5.0, 0.99]),
    nkeep=st.sampled_from([None, 0, 1, 3, -1, 50]),
    use_mask=st.booleans(),
)
def test_hypothesis(n, npix, seed, ties, name, pclip, nkeep, use_mask):
    rng = np.random.default_rng(seed)
    data, scale = band(rng, n, npix, ties=ties, nan=0.1, outliers=0.15)
    mask = (rng.random(data.shape) < 0.1).astype(np.uint8) if use_mask else None
    opts = dict(CASES[name])
    if pclip is not None:
        opts["pclip"] = pclip
    if nkeep is not None:
        opts["nkeep"] = nkeep
    check(data, mask, scale, None, opts)


# -- IRAF ------------------------------------------------------------------------------------


def _irafcl():
    return os.environ.get("GPUFLAT_BENCH_IRAFCL") or shutil.which("irafcl")


IRAF_CASES = [  # (frames, pclip, lsigma, hsigma); nkeep 0: IRAF's nkeep brings back every
    # sample of an equal residual, gpuflat's one at a time (the contract, step 5b)
    (1, -0.5, 0.5, 0.5),
    (2, 0.5, 0.5, 0.5),
    (3, -0.5, 1.0, 1.0),
    (4, -0.5, 1.5, 1.5),
    (5, 0.5, 2.0, 1.0),
    (6, -0.5, 3.0, 3.0),
    (8, -0.6, 2.0, 2.0),
    (9, 0.5, 1.5, 2.5),
    (10, -0.6, 1.0, 1.0),
    (10, 2.0, 2.0, 2.0),
    (11, -3.0, 3.0, 3.0),
    (12, 0.9, 1.0, 2.0),
    (7, 0.3, 0.5, 0.5),
]


@pytest.mark.skipif(_irafcl() is None, reason="irafcl (IRAF) is not installed")
def test_same_as_iraf_imcombine(tmp_path):
    """IRAF's imcombine reject=pclip on small integers (exact in IRAF's float32 too, so
    the bounds fall the same way), thresholds standing for masked samples (IRAF counts
    them out as gpuflat counts masked ones, the percentile pixel unchanged), no scaling:
    the survivors per pixel (``nrejmasks``) and the averages agree."""
    rng = np.random.default_rng(11)
    npix = 400
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "TERM": "dumb", "USER": os.environ.get("USER", "t")}
    subprocess.run([_irafcl()], input="logout\n", env=env, text=True, capture_output=True,
                   check=True, cwd=tmp_path, timeout=120)  # fmt: skip
    script = ['set imtype = "fits"', "images", "immatch", "unlearn imcombine"]
    stacks = []
    for c, (n, pclip, lsig, hsig) in enumerate(IRAF_CASES):
        data = rng.integers(95, 106, (n, npix)).astype(np.float32)
        out = rng.random(data.shape) < 0.15
        data[out] = rng.integers(60, 160, out.sum())
        data[rng.random(data.shape) < 0.08] = -1000.0  # excluded by the low threshold
        data[:, :40] = rng.choice(np.float32([98, 100, 100, 103]), (n, 40))  # ties
        names = []
        for i in range(n):
            fits.writeto(tmp_path / f"c{c}_{i}.fits", data[i][None, :])
            names.append(f"c{c}_{i}.fits")
        (tmp_path / f"c{c}.lst").write_text("\n".join(names) + "\n")
        script.append(
            f'imcombine ("@c{c}.lst", "out{c}.fits", nrejmasks="nrej{c}.pl", logfile="", '
            f'combine="average", reject="pclip", pclip={pclip}, lsigma={lsig}, '
            f'hsigma={hsig}, nkeep=0, lthreshold=-100., scale="none", zero="none", '
            'weight="none", outtype="real", blank=-1.)'
        )
        script.append(f'imcopy ("nrej{c}.pl", "nrej{c}.fits")')
        stacks.append(data)
    script += ["logout", ""]
    res = subprocess.run([_irafcl()], input="\n".join(script), env=env, text=True,
                         capture_output=True, check=True, cwd=tmp_path, timeout=300)  # fmt: skip
    for c, (n, pclip, lsig, hsig) in enumerate(IRAF_CASES):
        data = stacks[c]
        assert (tmp_path / f"out{c}.fits").exists(), res.stdout[-2000:] + res.stderr[-2000:]
        iraf_image = fits.getdata(tmp_path / f"out{c}.fits").ravel().astype(np.float64)
        iraf_count = n - fits.getdata(tmp_path / f"nrej{c}.fits").ravel().astype(int)
        opts = {"pclip": pclip, "sigma_low": lsig, "sigma_high": hsig, "min_value": -100.0}
        image, _, count = check(data, None, np.ones(n), None, opts)
        what = f"case {IRAF_CASES[c]}"
        np.testing.assert_array_equal(count, iraf_count, err_msg=what)
        some = count > 0
        np.testing.assert_allclose(image[some], iraf_image[some], rtol=1e-6, err_msg=what)
        assert (iraf_image[~some] == -1.0).all(), what  # IRAF's blank, gpuflat's NaN
        clipped = (count < (data > -100).sum(axis=0)).any()
        assert clipped == (n >= 3), what  # the case clips something, where it can


# -- options: library, config file, command line ---------------------------------------------


def test_combine_api(tmp_path):
    """``gpuflat.combine(clip='pclip')`` is the reference's combination (unscaled frames)."""
    import gpuflat

    rng = np.random.default_rng(3)
    frames = rng.normal(1.0, 0.01, (7, 20, 30))
    frames[rng.random(frames.shape) < 0.05] *= 1.5
    frames = frames.astype(np.float32)
    for opts in ({}, {"pclip": 2, "sigma_low": 2.0, "sigma_high": 2.0, "nkeep": 3}):
        result = gpuflat.combine(frames, clip="pclip", scale="none", backend="cpu", **opts)
        guide = {"pclip": -0.5, "sigma_low": 5.0, "sigma_high": 5.0}
        want = reference_pclip(frames.reshape(7, -1), **(guide | opts))
        np.testing.assert_array_equal(result.count.ravel(), want[2])
        np.testing.assert_allclose(result.image.ravel(), want[0], rtol=1e-6)  # float32
    assert result.count.min() >= 3 and (result.count < 7).any()


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"pclip": -0.5}, ValueError, r"pclip is only used with clip='pclip'.*clip='sigma'"),
        ({"clip": "ccdclip", "pclip": 2}, ValueError, "pclip is only used with clip='pclip'"),
        ({"clip": "pclip", "pclip": 0}, ValueError, r"pclip must be a fraction.*got 0"),
        ({"clip": "pclip", "pclip": 1.5}, ValueError, r"pclip must be .*whole number.*1\.5"),
        ({"clip": "pclip", "pclip": float("nan")}, ValueError, "pclip must be"),
        ({"clip": "pclip", "pclip": -math.inf}, ValueError, "pclip must be"),
        ({"clip": "pclip", "pclip": "-0.5"}, TypeError, "pclip must be a number"),
        ({"clip": "pclip", "pclip": True}, TypeError, "pclip must be a number"),
        ({"clip": "pclip", "center": "mean"}, ValueError, "center must be 'median' with"),
        ({"clip": "pclip", "dev": "std"}, ValueError, "dev must be 'mad_std' with"),
        ({"clip": "pclip", "maxiters": None}, ValueError, "maxiters must be 1 with"),
        ({"clip": "pclip", "maxiters": 3}, ValueError, "maxiters must be 1 with"),
        ({"clip": "pclips"}, ValueError, "'pclip'"),
    ],
)
def test_option_errors(kwargs, exc, words):
    from gpuflat._config import CombineConfig

    with pytest.raises(exc, match=words):
        CombineConfig(**kwargs)


def test_defaults_and_kernel_params():
    from gpuflat._config import CombineConfig

    config = CombineConfig(clip="pclip")
    assert config.pclip == -0.5 and config.describe()["pclip"] == -0.5
    assert config.kernel_params().pclip == -0.5 and config.kernel_params().sigma == 1
    assert CombineConfig(clip="pclip", pclip=3).pclip == 3.0
    assert CombineConfig().pclip is None and CombineConfig().kernel_params().pclip == 0.0


def _flats(tmp_path, n=6):
    from conftest import flat_stack, write_fits

    rng = np.random.default_rng(4)
    frames = flat_stack(rng, n=n, shape=(16, 16), outliers=0.05)
    for i, f in enumerate(frames):
        write_fits(tmp_path / f"f{i}.fits", f, IMAGETYP="FLAT", FILTER="R")
    return frames


def test_cli_config_file_and_provenance(tmp_path, capsys):
    from gpuflat.cli import main
    from gpuflat.farm import build_options

    _flats(tmp_path)
    out = tmp_path / "out"
    argv = ["run", str(tmp_path), "-o", str(out), "-q", "--clip", "pclip", "--pclip", "-0.3",
            "--sigma-low", "2", "--sigma-high", "2"]  # fmt: skip
    assert main(argv) == 0
    header = fits.getheader(out / "combined_flat_filter_R.fits")
    assert header["HIERARCH GPUFLAT CLIP"] == "pclip"
    assert header["HIERARCH GPUFLAT PCLIP"] == -0.3
    assert main(["run", str(tmp_path), "-o", str(tmp_path / "o2"), "-q", "--clip", "pclip"]) == 0
    header = fits.getheader(tmp_path / "o2" / "combined_flat_filter_R.fits")
    assert header["HIERARCH GPUFLAT PCLIP"] == -0.5  # IRAF's default, as applied
    toml = tmp_path / "farm.toml"
    toml.write_text('clip = "pclip"\npclip = 2\n')
    assert build_options({}, str(toml)).combine.pclip == 2.0
    capsys.readouterr()
    for bad, words in (
        (["--pclip", "-0.5"], "--pclip is only used with clip='pclip'"),
        (["--clip", "pclip", "--pclip", "0"], "--pclip must be a fraction"),
        (["--clip", "pclip", "--pclip", "2.5"], "--pclip must be"),
        (["--clip", "pclip", "--maxiters", "2"], "maxiters must be 1 with clip='pclip'"),
    ):
        assert main(["run", str(tmp_path), "-o", str(out), *bad]) == 2
        err = capsys.readouterr().err
        assert words in err and err.strip().count("\n") == 0, err


def test_cli_help(capsys):
    from gpuflat.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "pclip" in text.split("--clip")[1].split("--")[0]
    assert "--pclip P" in text and "default -0.5, IRAF's" in text
