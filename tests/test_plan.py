"""Band planning (gpuflat._plan): the byte accounting, with and without masks."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import flat_stack, write_fits

from gpuflat._plan import plan_bands


def working_bytes(rows, n, cols, itemsize, masked):
    """Pass 2's working memory as the module documents it, counted independently."""
    stacks = 2 * n * rows * cols * itemsize
    masks = 2 * n * rows * cols if masked else 0
    raw = rows * cols * 8
    outputs = rows * cols * (8 + 8 + 4)
    return stacks + masks + raw + outputs


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("itemsize", [4, 8])
def test_bands_fit_the_limit_with_their_masks(masked, itemsize):
    n, shape, limit = 20, (2000, 600), 40e6
    plan = plan_bands(n, shape, itemsize=itemsize, masked=masked, mem_limit=limit)
    assert plan.nbands > 1 and plan.nbands == -(-shape[0] // plan.rows)
    assert working_bytes(plan.rows, n, shape[1], itemsize, masked) <= limit
    # and it is the largest such band (up to the 64 MB target)
    assert working_bytes(plan.rows + 1, n, shape[1], itemsize, masked) > limit
    assert plan.pass1_bytes <= limit


def test_masks_make_bands_smaller():
    args = dict(itemsize=4, mem_limit=40e6)
    plain = plan_bands(20, (2000, 600), masked=False, **args)
    masked = plan_bands(20, (2000, 600), masked=True, **args)
    assert masked.rows < plain.rows


def test_single_band_when_everything_fits():
    plan = plan_bands(5, (100, 80), itemsize=4, masked=True, mem_limit=350e6)
    assert plan.single and plan.rows == 100


def test_too_small_a_limit_says_how_much_is_needed():
    with pytest.raises(ValueError, match=r"mem_limit=1000 bytes is too small .* at least"):
        plan_bands(5, (100, 80), itemsize=4, masked=False, mem_limit=1000)


MEMORY_SCRIPT = """
import sys, numpy as np, gpuflat

def status(key):
    line = next(ln for ln in open("/proc/self/status") if ln.startswith(key + ":"))
    return int(line.split()[1]) * 1024

paths = sys.argv[1:-2]; mask = sys.argv[-2]; limit = float(sys.argv[-1])
# compile and warm up: the same combination (kernels are compiled per size class of the
# stack)
gpuflat.combine(paths, mem_limit=limit, mask=mask)
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak (VmHWM)
r = gpuflat.combine(paths, mem_limit=limit, mask=mask)
print(before, status("VmHWM"), r.plan.nbands)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_memory_with_a_bad_pixel_mask(tmp_path, rng):
    """With a mask, the mask bands count against the limit too."""
    n, shape, limit = 40, (1024, 512), 20e6  # an 84 MB stack plus 21 MB of mask bytes
    frame = flat_stack(rng, n=1, shape=shape)[0]
    paths = [write_fits(tmp_path / f"f{i}.fits", frame * (1 + i / 10)) for i in range(n)]
    bpm = np.zeros(shape, np.uint8)
    bpm[::7, ::5] = 1
    mask = write_fits(tmp_path / "bpm.fits", bpm)
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, *paths, mask, str(limit)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    before, peak, nbands = (int(v) for v in out.stdout.split())
    outputs = shape[0] * shape[1] * (4 + 4 + 4 + 1) + bpm.size  # and the mask itself
    assert nbands > 1
    assert peak - before > limit / 4, (peak - before) / 1e6
    assert peak - before < limit + outputs + 12e6, (peak - before) / 1e6
