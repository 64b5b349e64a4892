"""bench/device_check.sh, here where there is no GPU: it must stop cleanly and say why.

On a GPU machine the script is the device check itself (it runs for minutes), so this test
only runs it where no GPU is visible and checks the documented clean stop: exit status 3,
a message naming what is missing, the log and summary in $OUT, and nothing else done.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "device_check.sh"

BASH = shutil.which("bash")


def _gpu_visible() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    res = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    return any(line.startswith("GPU ") for line in res.stdout.splitlines())


pytestmark = [
    pytest.mark.skipif(BASH is None, reason="bash not found"),
    pytest.mark.skipif(_gpu_visible(), reason="a GPU is visible: the script would really run"),
]


def _run(tmp_path, *args, out=True):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHON"] = sys.executable
    env["TMPDIR"] = str(tmp_path)
    if out:
        env["OUT"] = str(tmp_path / "out")
    return subprocess.run(
        [BASH, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=120,
        check=False,
    )


def test_stops_cleanly_without_gpu(tmp_path):
    res = _run(tmp_path)
    assert res.returncode == 3, res.stdout + res.stderr
    out = tmp_path / "out"
    assert "NO GPU:" in res.stdout and "Stopped cleanly before any step" in res.stdout
    assert "exit status 3 means: no GPU here" in res.stdout
    # gpuflat's own reason is given too (here: CuPy missing, or no driver / device)
    assert "gpuflat's available(): " in res.stdout
    log = (out / "device_check.log").read_text()
    assert "NO GPU:" in log
    assert (out / "summary.txt").read_text().startswith("no-gpu: ")
    assert not (out / "figures.json").exists() and not (out / "gpu_tests.xml").exists()
    assert "== env" not in res.stdout  # no step ran


def test_without_out_uses_a_temporary_folder(tmp_path):
    res = _run(tmp_path, out=False)
    assert res.returncode == 3, res.stdout + res.stderr
    [folder] = tmp_path.glob("gpuflat-device-check.*")
    assert f"output in {folder}" in res.stdout
    assert (folder / "device_check.log").exists()


def test_bad_usage(tmp_path):
    res = _run(tmp_path, "--frobnicate")
    assert res.returncode == 2 and "usage:" in res.stderr


def test_header_documents_exit_codes_and_wheels():
    head = SCRIPT.read_text().split("set -uo pipefail")[0]
    for code in ("0  every", "1  a step", "2  bad usage", "3  no GPU", "4  set-up"):
        assert code in head
    assert "--fetch-wheels" in head and "bench/wheels" in head
    assert "bench/wheels/" in (ROOT / ".gitignore").read_text().split()
