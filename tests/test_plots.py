"""Tests of the diagnostic plots (gpuflat._plots)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpimg

from gpuflat import _plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path, size):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = mpimg.imread(path)
    width, height = size
    assert pixels.shape == (round(height * _plots.DPI), round(width * _plots.DPI), 4)
    # Something was drawn: not a blank canvas.
    assert np.ptp(pixels[..., :3]) > 0.5
    # No temporary file left beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


@pytest.fixture
def flat_image():
    rng = np.random.default_rng(1)
    y, x = np.mgrid[:120, :160]
    img = 1.0 - 0.1 * ((x - 80) ** 2 + (y - 60) ** 2) / 80**2 + rng.normal(0, 0.01, (120, 160))
    img[10:14, 20:30] = np.nan
    img[50, 50] = np.inf
    return img


def test_plot_levels(tmp_path):
    names = [f"twiflat-V-{i:03d}.fits" for i in range(1, 8)]
    medians = 40000 * (6000 / 40000) ** np.linspace(0, 1, 7)
    path = tmp_path / "levels.png"
    _plots.plot_levels(path, names, medians, medians * 1.01, title="Twilight flat levels")
    _check_png(path, _plots.LEVELS_SIZE)


def test_plot_levels_many_frames_and_nan(tmp_path):
    n = 45
    names = [f"f{i}" for i in range(n)]
    medians = np.linspace(20000, 21000, n)
    medians[3] = np.nan
    path = tmp_path / "levels.png"
    _plots.plot_levels(path, names, medians, medians, title="many")
    _check_png(path, _plots.LEVELS_SIZE)


def test_plot_levels_length_mismatch(tmp_path):
    with pytest.raises(ValueError, match="differ in length"):
        _plots.plot_levels(tmp_path / "x.png", ["a", "b"], [1.0], [1.0, 2.0], title="t")
    assert list(tmp_path.iterdir()) == []


def test_plot_flat(tmp_path, flat_image):
    path = tmp_path / "flat.png"
    _plots.plot_flat(path, flat_image, title="Combined flat, V")
    _check_png(path, _plots.FLAT_SIZE)


@pytest.mark.parametrize("kind", ["all_nan", "constant", "large"])
def test_plot_flat_degenerate_images(tmp_path, kind):
    if kind == "all_nan":
        img = np.full((20, 30), np.nan, np.float32)
    elif kind == "constant":
        img = np.ones((20, 30), np.float32)
    else:
        img = np.random.default_rng(0).normal(1.0, 0.01, (2100, 64)).astype(np.float32)
    path = tmp_path / "flat.png"
    _plots.plot_flat(path, img, title=kind)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert mpimg.imread(path).shape[:2] == (
        round(_plots.FLAT_SIZE[1] * _plots.DPI),
        round(_plots.FLAT_SIZE[0] * _plots.DPI),
    )


def test_plot_flat_rejects_non_2d(tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        _plots.plot_flat(tmp_path / "x.png", np.ones(5), title="t")
    assert list(tmp_path.iterdir()) == []


def test_plot_scaling(tmp_path):
    levels = 40000 * (6000 / 40000) ** np.linspace(0, 1, 7)
    path = tmp_path / "scaling.png"
    _plots.plot_scaling(path, levels, 1 / levels, title="Scaling matters")
    _check_png(path, _plots.LEVELS_SIZE)
    with pytest.raises(ValueError, match="differ in length"):
        _plots.plot_scaling(tmp_path / "x.png", levels, levels[:3], title="t")


def test_plot_levels_marks_the_frames_left_out(tmp_path):
    """The frames QA left out are drawn (red crosses) and their reasons written: the same
    plot without them differs, in red pixels."""
    names = [f"f{i}.fits" for i in range(6)]
    medians = np.array([1000.0, 1010, 990, 65535, 1005, 995])
    plain, marked = tmp_path / "plain.png", tmp_path / "marked.png"
    _plots.plot_levels(plain, names, medians, medians, title="t")
    _plots.plot_levels(marked, names, medians, medians, title="t",
                       left_out={3: "saturated: median level 65535 >= 62258.2"})  # fmt: skip

    def red(path):
        px = mpimg.imread(path)[..., :3]
        return int(((px[..., 0] > 0.8) & (px[..., 1] < 0.3) & (px[..., 2] < 0.3)).sum())

    assert red(plain) == 0 and red(marked) > 100


def test_plot_overwrites_existing_file(tmp_path, flat_image):
    path = tmp_path / "flat.png"
    path.write_bytes(b"old")
    _plots.plot_flat(path, flat_image, title="again")
    _check_png(path, _plots.FLAT_SIZE)


def test_plot_failure_leaves_nothing(tmp_path, flat_image):
    missing = tmp_path / "no-such-dir" / "flat.png"
    with pytest.raises(FileNotFoundError):
        _plots.plot_flat(missing, flat_image, title="t")
    assert list(tmp_path.iterdir()) == []


def test_pyplot_not_used(tmp_path):
    """The plots draw on the Agg canvas directly: pyplot is never imported (checked in a
    fresh process, where nothing else could have imported it)."""
    code = (
        "import sys, numpy as np; from gpuflat import _plots; "
        f"_plots.plot_flat({str(tmp_path / 'f.png')!r}, np.ones((40, 50)), title='t'); "
        f"_plots.plot_levels({str(tmp_path / 'l.png')!r}, ['a', 'b'], [1.0, 2.0], [1.0, 2.0], "
        "title='t'); "
        f"_plots.plot_scaling({str(tmp_path / 's.png')!r}, [1.0, 2.0], [1.0, 0.5], "
        "title='t'); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert (tmp_path / "f.png").exists() and (tmp_path / "s.png").exists()
