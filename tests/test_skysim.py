"""The night-sky simulation (``gpuflat simulate --sky``) and the figure of merit
(``gpuflat compare``), against independent NumPy/astropy computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData
from astropy.stats import mad_std

from gpuflat import compare_flats
from gpuflat._simulate import flat_field_truth
from gpuflat._skysim import SATURATION, simulate_sky, star_light
from gpuflat.cli import main

SHAPE = (128, 160)


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """The same night with and without stars."""
    out = {}
    for name, cover in (("stars", 0.05), ("starless", 0.0)):
        d = tmp_path_factory.mktemp(name)
        out[name] = simulate_sky(d, shape=SHAPE, n_frames=4, cover=cover, seed=5)
    return out


def test_frames_and_truth(nights):
    paths = nights["stars"]
    assert [p.name for p in paths] == [f"sky-V-{i:03d}.fits" for i in (1, 2, 3, 4)] + [
        "trueflat-V.fits"
    ]
    headers = [fits.getheader(p) for p in paths[:-1]]
    assert {h["IMAGETYP"] for h in headers} == {"OBJECT"}
    assert all(h["SATURATE"] == SATURATION for h in headers)
    # dithered: every frame points elsewhere; the seeing changes
    offsets = {(h["DITHERY"], h["DITHERX"]) for h in headers}
    assert len(offsets) == 4
    assert len({h["FWHM"] for h in headers}) == 4
    assert all(0.02 < h["STARCOV"] < 0.09 for h in headers)
    header = fits.getheader(paths[-1])
    assert header["COMBINED"] is True and header["IMAGETYP"] == "TRUEFLAT"
    np.testing.assert_array_equal(fits.getdata(paths[-1]), flat_field_truth(SHAPE, "V", 5))
    assert CCDData.read(paths[-1]).unit == u.dimensionless_unscaled  # as the masters
    for p in paths[:-1]:  # never above the converter's end; sky 400-900 ADU
        data = fits.getdata(p)
        assert data.max() <= SATURATION
        assert 350 < np.median(data) < 1000


def test_starless_night_is_the_same_but_for_the_stars(nights):
    for a, b in zip(nights["stars"][:-1], nights["starless"][:-1], strict=True):
        sa, sb = fits.getdata(a), fits.getdata(b)
        assert fits.getheader(b)["STARCOV"] == 0
        # the same sky, noise draws and cosmic rays: where the stars add next to nothing,
        # next to nothing changes
        assert np.median(np.abs(sa - sb)) < 0.5
        assert (sa - sb).max() > 300


def test_stars_move_between_frames(nights):
    a, b = (fits.getdata(p) for p in nights["stars"][:2])
    c, d = (fits.getdata(p) for p in nights["starless"][:2])
    star_a = (a - c) > 100
    star_b = (b - d) > 100
    assert star_a.sum() > 20 and star_b.sum() > 20
    assert (star_a & star_b).sum() < 0.5 * min(star_a.sum(), star_b.sum())


def test_star_light_is_the_frames_stars(nights):
    """``star_light`` (the bench's perfect masks) gives each frame's own stars: above its
    sky noise on the fraction of pixels its header says (STARCOV), and where the frame with
    stars differs from the same frame without them."""
    lights = list(star_light(SHAPE, n_frames=4, cover=0.05, seed=5))
    assert len(lights) == 4
    pairs = zip(nights["stars"][:-1], nights["starless"][:-1], lights, strict=True)
    for a, b, light in pairs:
        starcov = fits.getheader(a)["STARCOV"]  # written to 4 digits
        assert np.mean(light > 1) == pytest.approx(starcov, abs=5e-5)
        diff = fits.getdata(a) - fits.getdata(b)
        assert np.median(diff[light > 20]) > 100  # bright star light: in the frame
        assert np.median(np.abs(diff[light < 0.01])) < 0.5  # none: nothing added
    assert not any(light.any() for light in star_light(SHAPE, n_frames=2, cover=0, seed=5))


def test_compare_against_numpy():
    rng = np.random.default_rng(1)
    truth = rng.uniform(0.8, 1.2, (100, 120))
    sigma = 0.01
    noise = 1 + sigma * rng.standard_normal(truth.shape)
    master = 3.0 * truth * noise
    master[10, 10:20] *= 1.2  # 10 pixels 20 sigma off
    got = compare_flats(master, truth)
    ratio = (master / np.median(master)) / (truth / np.median(truth))
    ratio /= np.median(ratio)
    robust = mad_std(ratio)
    assert got["robust_sigma"] == pytest.approx(robust, rel=1e-12)
    assert got["off"] == int(np.sum(np.abs(ratio - 1) > 5 * robust))
    assert got["off"] >= 10
    assert got["rms"] == pytest.approx(np.sqrt(np.mean((ratio - 1) ** 2)), rel=1e-12)
    count = np.full(truth.shape, 4)
    count[:50] = 1  # half the pixels from one frame: twice the noise
    master2 = master.copy()
    master2[:50] *= 1 + 7 * robust * np.sign(rng.standard_normal((50, 120)))  # 7 sigma
    got = compare_flats(master2, truth, count=count, sigma=robust)
    ratio = (master2 / np.median(master2)) / (truth / np.median(truth))
    ratio /= np.median(ratio)
    expected = robust * np.sqrt(4 / count)
    assert got["off_expected"] == int(np.sum(np.abs(ratio - 1) > 5 * expected))
    assert got["off"] > 5000 > got["off_expected"]
    given = compare_flats(master, truth, sigma=0.5)
    assert given["off"] == 0 and given["sigma_from"] == "given"
    with pytest.raises(ValueError, match="shape"):
        compare_flats(master[:10], truth)


def test_cli_simulate_sky_and_compare(tmp_path, capsys):
    night = tmp_path / "sky"
    assert main(["simulate", str(night), "--sky", "--size", "64x64", "--n-sky", "3", "-q"]) == 0
    truth = night / "trueflat-V.fits"
    out = tmp_path / "cmp.json"
    assert main(["compare", str(truth), str(truth), "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["off"] == 0 and figures["rms"] == 0
    assert "0 pixels off by more than 5 x sigma" in capsys.readouterr().out
    assert main(["compare", str(truth), str(tmp_path / "none.fits")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["simulate", str(night), "--sky", "--cover", "0.9"]) == 2
