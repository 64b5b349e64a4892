"""The first run and ``gpuflat warmup``, in fresh processes with an empty numba cache.

A first run says once that it compiles (and where the cache is); ``gpuflat info`` tells a
cold cache from a warm one; after ``gpuflat warmup`` a new process compiles nothing, over
runs and library calls of every kind: numba's own compile events are counted, no timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs and calls of many kinds (the size classes of the fast path, the generic path, the
# ccdproc drop-in, integer frames, banded plans, masks...): prints the gpuflat kernels
# numba compiled meanwhile, as JSON.
BATTERY = r"""
import json, sys, warnings
import numpy as np
from astropy.nddata import CCDData
from gpuflat import api, ccdproc_compat
from gpuflat.backends._compile import compiles_in
from gpuflat.cli import main

night, out = sys.argv[1:3]

def battery():
    rng = np.random.default_rng(5)
    for n in (3, 12, 16, 20, 24, 31, 40, 44, 48, 60):
        data = rng.normal(500, 5, (n, 30, 70)).astype(np.float32)
        data[1, 2, 3] = np.nan
        api.combine(list(data))
        api.combine(list(data), method="median", mem_limit=3.0 * data.nbytes)
    api.combine(list(data[:9]), clip="ccdclip", rdnoise=4.0, noise_gain=2.0, nkeep=-2)
    api.combine(list(data[:9]), center="mean", dev="std", nlow=1, nhigh=2)
    api.combine(list(data[:8]), clip="pclip", pclip=2, sigma_low=1.0, nkeep=3)
    api.combine(list(data[:9]), grow=2.0, mem_limit=3.0 * data[:9].nbytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ccdproc_compat.combine([CCDData(d, unit="adu") for d in data[:7]], sigma_clip=True)
    frame = rng.normal(800, 9, (600, 700)).astype(np.float32)
    api.combine([frame, frame * 1.01, frame * 0.99])
    for args in ([night, "-o", out, "-q"],
                 [night, "-o", out + "2", "-q", "--mem-limit", "3e5", "--scale", "mean"]):
        assert main(["run", *args]) == 0

print(json.dumps(compiles_in(battery)))
"""


def _gpuflat(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "gpuflat", *args], capture_output=True, text=True, env=env,
        cwd=ROOT,
    )  # fmt: skip


@pytest.mark.slow
def test_first_run_says_it_compiles_and_warmup_leaves_nothing_to_compile(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    night = tmp_path / "night"
    sim = _gpuflat(env, "simulate", str(night), "--size", "64x96", "--dtype", "uint16", "-q")
    assert sim.returncode == 0, sim.stderr

    info = _gpuflat(env, "info")
    assert "compiled kernels: cold" in info.stdout, info.stdout
    assert str(tmp_path / "numba-cache") in info.stdout

    first = _gpuflat(env, "run", str(night), "-o", str(tmp_path / "first"))
    assert first.returncode == 0, first.stderr
    said = [ln for ln in first.stderr.splitlines() if "compiling" in ln]
    assert len(said) == 1, first.stderr
    assert str(tmp_path / "numba-cache") in said[0] and "gpuflat warmup" in said[0]
    quiet = _gpuflat(env, "run", str(night), "-o", str(tmp_path / "quiet"), "-q",
                     "--dev", "std")  # fmt: skip
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr

    warm = _gpuflat(env, "warmup", "-q")
    assert warm.returncode == 0, warm.stderr
    info = _gpuflat(env, "info")
    assert "compiled kernels: warm" in info.stdout, info.stdout

    again = subprocess.run(
        [sys.executable, "-c", BATTERY, str(night), str(tmp_path / "battery")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1]) == []
    rerun = _gpuflat(env, "run", str(night), "-o", str(tmp_path / "second"))
    assert rerun.returncode == 0 and "compiling" not in rerun.stderr, rerun.stderr

    # a second warmup compiles nothing either
    second = subprocess.run(
        [sys.executable, "-c",
         "import json; from gpuflat.backends._compile import compiles_in; "
         "from gpuflat.farm.warmup import warmup; print(json.dumps(compiles_in(warmup)))"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout.strip().splitlines()[-1]) == []
