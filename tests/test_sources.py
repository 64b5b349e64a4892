"""Source masks and the saturation rule (sky and twilight flats), against independent
references: sep's background with scipy's labelling and a brute-force disk for the masks,
tests/reference.py (NumPy + astropy) for the combinations, NumPy counts for saturation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from reference import reference_combine
from scipy import ndimage

import gpuflat
from gpuflat import _sources
from gpuflat._skysim import simulate_sky
from gpuflat.cli import main
from gpuflat.errors import GpuflatError, MissingDependencyError

sep = pytest.importorskip("sep")

SHAPE = (160, 192)


def _disk(mask, radius):
    """Brute-force dilation by the disk dy^2 + dx^2 <= radius^2."""
    out = mask.copy()
    r = int(np.floor(radius))
    ny, nx = mask.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= radius * radius:
                shifted = np.zeros_like(mask)
                shifted[max(dy, 0) : ny + min(dy, 0), max(dx, 0) : nx + min(dx, 0)] = mask[
                    max(-dy, 0) : ny + min(-dy, 0), max(-dx, 0) : nx + min(-dx, 0)
                ]
                out |= shifted
    return out


def _stack(seed=0, n=4, saturate=None, shape=SHAPE):
    """Sky frames with gaussian stars at new places in each, sky 500-800 ADU."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    flat = 1 + 0.05 * np.cos(xx / 40.0) * np.sin(yy / 30.0)
    frames = []
    for i in range(n):
        sky = 500 + 100 * i
        img = np.full(shape, float(sky))
        for _ in range(int(40 * ny * nx / (160 * 192))):
            y, x = rng.uniform(0, ny), rng.uniform(0, nx)
            peak = np.exp(rng.uniform(np.log(80), np.log(20000)))
            img += peak * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2))
        img = img * flat + rng.normal(0, np.sqrt(img / 1.5 + 25))
        if saturate is not None:
            img = np.minimum(img, saturate)
        frames.append(img.astype(np.float32))
    return np.array(frames)


@pytest.mark.parametrize("radius", [0, 1, 2, 2.5, 3.7])
def test_grow_is_a_disk_dilation(radius):
    mask = np.random.default_rng(1).random((60, 70)) > 0.99
    mask[0, 0] = mask[-1, -1] = True  # at the edges
    np.testing.assert_array_equal(_sources.grow(mask, radius), _disk(mask, radius))


def test_masks_and_master_against_references():
    frames = _stack()
    n = len(frames)
    got = gpuflat.combine(frames, mask_sources=True, backend="cpu")
    # the provisional master: the plain combination, by the reference
    scales = 1 / np.median(frames.reshape(n, -1).astype(np.float64), axis=1)
    master = reference_combine(frames.reshape(n, -1), scale=scales)[0].reshape(SHAPE)
    master = master.astype(np.float32)
    agree = []
    for i in range(n):
        ratio = frames[i] * np.float32(scales[i]) / master
        bad = ~np.isfinite(ratio)
        ratio[bad] = 1
        bkg = sep.Background(ratio, mask=bad, bw=64, bh=64, fw=3, fh=3)
        above = ((ratio - bkg.back()) > 3 * bkg.rms()) & ~bad
        labels, _ = ndimage.label(above, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel())
        keep = sizes >= 2  # the defaults: 2 pixels, grown by 1.5
        keep[0] = False
        want = _disk(keep[labels], 1.5)
        mine = got.source_masks.mask(i)
        assert got.masked_pixels[i] == mine.sum()
        agree.append(np.mean(mine == want))
        assert 0.01 < want.mean() < 0.3
    # float32 rounding of the master may flip a pixel at the threshold, no more
    assert min(agree) > 0.999
    # the final combination: the reference with every frame's mask
    masks = np.array([got.source_masks.mask(i) for i in range(n)]).reshape(n, -1)
    fscales = 1 / np.array(
        [
            np.median(f[~m.reshape(SHAPE)].astype(np.float64))
            for f, m in zip(frames, masks, strict=True)
        ]
    )
    image, _, count = reference_combine(frames.reshape(n, -1), masks.astype(np.uint8), fscales)
    np.testing.assert_allclose(got.scales, fscales, rtol=1e-12)
    np.testing.assert_array_equal(got.count.ravel(), count)
    np.testing.assert_allclose(got.image.ravel(), image, rtol=2e-6, equal_nan=True)


def test_banded_mask_pass():
    """Under a small mem_limit the pass goes in bands with halo rows; bands start on mesh
    rows, so the background meshes are the whole frame's and the masks nearly the same."""
    shape = (512, 96)
    frames = _stack(seed=2, n=3, shape=shape)
    whole = gpuflat.combine(frames, mask_sources=True, backend="cpu")
    rows, halo = _sources.plan(3, shape, mem_limit=1.4e6, grow=2)
    assert 0 < rows < shape[0] and halo % _sources.BOX == 0 and rows % _sources.BOX == 0
    banded = gpuflat.combine(frames, mask_sources=True, backend="cpu", mem_limit=1.4e6)
    assert banded.plan.nbands > 1
    for i in range(3):
        assert np.mean(banded.source_masks.mask(i) == whole.source_masks.mask(i)) > 0.995


def test_file_reads_counted(tmp_path, monkeypatch):
    """With one band every file is read three times (provisional, mask pass, final)."""
    paths = []
    for i, f in enumerate(_stack(seed=3, n=3)):
        paths.append(tmp_path / f"f{i}.fits")
        fits.writeto(paths[-1], f)
    from gpuflat import _frames

    rows = {}
    original = _frames.FitsFrame.read_rows

    def counting(self, r0, r1, out):
        rows[self.name] = rows.get(self.name, 0) + (r1 - r0)
        return original(self, r0, r1, out)

    monkeypatch.setattr(_frames.FitsFrame, "read_rows", counting)
    gpuflat.combine([str(p) for p in paths], mask_sources=True, backend="cpu")
    assert set(rows.values()) == {3 * SHAPE[0]}


def test_saturation_masks_and_counts(tmp_path):
    frames = _stack(seed=4, n=4, saturate=9000.0)
    got = gpuflat.combine(frames, saturation=9000.0, backend="cpu")
    want = (frames >= 9000.0).reshape(4, -1)
    assert list(got.source_masks.saturated) == list(want.sum(axis=1))
    assert got.source_masks.saturated.sum() > 0
    for i in range(4):
        np.testing.assert_array_equal(got.source_masks.mask(i).ravel(), want[i])
    scales = 1 / np.array(
        [
            np.median(f[~w.reshape(SHAPE)].astype(np.float64))
            for f, w in zip(frames, want, strict=True)
        ]
    )
    image, _, count = reference_combine(frames.reshape(4, -1), want.astype(np.uint8), scales)
    np.testing.assert_array_equal(got.count.ravel(), count)
    np.testing.assert_allclose(got.image.ravel(), image, rtol=2e-6, equal_nan=True)
    # a keyword: each frame's own level, from its header
    for i, f in enumerate(frames):
        fits.writeto(tmp_path / f"s{i}.fits", f, fits.Header({"SATURATE": 9000.0}))
    by_key = gpuflat.combine(str(tmp_path / "s*.fits"), saturation="SATURATE", backend="cpu")
    assert list(by_key.source_masks.saturated) == list(want.sum(axis=1))
    fits.writeto(tmp_path / "s9.fits", frames[0])
    with pytest.raises(GpuflatError, match=r"s9\.fits: --saturation SATURATE: no such keyword"):
        gpuflat.combine(str(tmp_path / "s*.fits"), saturation="SATURATE", backend="cpu")


def test_options_validated(monkeypatch):
    with pytest.raises(ValueError, match="source_sigma must be"):
        gpuflat.combine(_stack(n=3), mask_sources=True, source_sigma=0)
    with pytest.raises(ValueError, match="source_iters must be an integer >= 1"):
        gpuflat.combine(_stack(n=3), mask_sources=True, source_iters=0)
    with pytest.raises(ValueError, match="saturation must be"):
        gpuflat.combine(_stack(n=3), saturation="no such key")
    monkeypatch.setattr(_sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'gpuflat\[sky\]'"):
        gpuflat.combine(_stack(n=3), mask_sources=True)


def test_sky_night_target(tmp_path):
    """The issue's figure of merit on a small dithered sky night: the masked master has
    about as many pixels off the truth by > 5 sigma as the same night without stars; the
    plain combination many times more."""
    off = {}
    for name, cover in (("starless", 0.0), ("stars", 0.05)):
        paths = simulate_sky(tmp_path / name, shape=(256, 256), n_frames=7, cover=cover, seed=11)
        truth = str(paths[-1])
        frames = [str(p) for p in paths[:-1]]
        plain = gpuflat.combine(frames, backend="cpu")
        if name == "starless":
            sigma = gpuflat.compare_flats(plain.image, truth)["robust_sigma"]
            off["starless"] = gpuflat.compare_flats(plain.image, truth, sigma=sigma)["off"]
            continue
        off["plain"] = gpuflat.compare_flats(plain.image, truth, sigma=sigma)["off"]
        masked = gpuflat.combine(frames, backend="cpu", mask_sources=True)
        off["masked"] = gpuflat.compare_flats(masked.image, truth, sigma=sigma)["off"]
    print(off)
    assert off["plain"] > 5 * max(off["starless"], 4)
    assert off["masked"] <= max(1.2 * off["starless"], off["starless"] + 4)


def test_cli_run_masked_saturated_frame_left_out(tmp_path, capsys):
    night = tmp_path / "sky"
    simulate_sky(night, shape=(128, 128), n_frames=4, seed=2)
    # one frame with a tenth of its pixels saturated
    path = night / "sky-V-002.fits"
    with fits.open(path, mode="update") as hdul:
        hdul[0].data[:13] = 60000.0
    out = tmp_path / "out"
    report = tmp_path / "r.json"
    code = main([
        "run", str(night), "--imagetyp", "OBJECT", "-o", str(out), "--mask-sources",
        "--saturation", "SATURATE", "--report", str(report), "-q",
    ])  # fmt: skip
    assert code == 0
    entry = json.loads(report.read_text())["groups"][0]
    verdicts = {e["file"].rsplit("/", 1)[1]: e for e in entry["frames"]}
    assert verdicts["sky-V-002.fits"]["qa"].startswith("left out: saturated: 10.2%")
    assert entry["frames_combined"] == 3
    kept = [e for e in entry["frames"] if e["qa"] == "kept"]
    assert all(e["masked_pixels"] > 0 and "saturated_pixels" in e for e in kept)
    header = fits.getheader(out / "combined_flat_filter_V.fits")
    assert [header[f"MASKP{i:03d}"] for i in (1, 2, 3)] == [e["masked_pixels"] for e in kept]
    assert header["HIERARCH GPUFLAT MASK_SOURCES"] is True
    assert main(["run", str(night), "--mask-sources", "--source-sigma", "-1"]) == 2
    assert "--source-sigma must be" in capsys.readouterr().err


def test_host_path_takes_the_masks(tmp_path):
    """On the CUDA backend's host path (the fake device of test_cuda_streaming, the real
    kernels through the CPU shim) the mask pass's masks reach the kernels as the frames'
    mask rows: the masked master is bit for bit the numba backend's."""
    harness = pytest.importorskip("cuda_harness")
    if harness.compiler() is None:
        pytest.skip("no host C++ compiler (g++)")
    from fake_device import FakeDevice, same

    from gpuflat.backends import NumbaBackend
    from gpuflat.backends._cuda import CudaBackend

    paths = []
    for i, f in enumerate(_stack(seed=6, n=4)):
        paths.append(str(tmp_path / f"f{i}.fits"))
        fits.writeto(paths[-1], f)
    dev = FakeDevice()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gpuflat.api, "get_backend", lambda name: CudaBackend(dev))
        got = gpuflat.combine(paths, mask_sources=True, saturation=9000.0)
    dev.assert_idle()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gpuflat.api, "get_backend", lambda name: NumbaBackend())
        want = gpuflat.combine(paths, mask_sources=True, saturation=9000.0)
    assert got.backend == "cuda" and want.backend == "cpu"
    np.testing.assert_array_equal(got.source_masks.packed, want.source_masks.packed)
    assert same((got.image, got.uncertainty, got.count, got.scales),
                (want.image, want.uncertainty, want.count, want.scales))  # fmt: skip
