import numpy as np
import pytest
from astropy.io import fits


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def flat_stack(rng, n=9, shape=(61, 47), level=1000.0, outliers=0.01):
    """Frames of one optical flat at drifting levels, with noise and cosmic-ray outliers."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    optical = 1 - 0.1 * (
        ((yy - shape[0] / 2) / shape[0]) ** 2 + ((xx - shape[1] / 2) / shape[1]) ** 2
    )
    levels = level * rng.uniform(0.5, 2.0, n)
    stack = levels[:, None, None] * optical * rng.normal(1, 0.01, (n, *shape))
    stack[rng.random(stack.shape) < outliers] *= 20
    return stack.astype(np.float32)


def write_fits(path, data, **header):
    hdr = fits.Header()
    for k, v in header.items():
        hdr[k] = v
    fits.PrimaryHDU(data, hdr).writeto(path)
    return str(path)


@pytest.fixture
def stack(rng):
    return flat_stack(rng)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``sweep`` (heavier sweeps) run only when ``-m`` names them
    (``pytest -m sweep``); a plain ``pytest -q`` skips them, saying how to run them."""
    if "sweep" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="a heavier sweep: run with pytest -m sweep (docs/gpu.md)")
    for item in items:
        if "sweep" in item.keywords:
            item.add_marker(skip)
