"""Build the prebuilt CUDA kernels: ``make kernels`` runs ``python -m gpuflat.backends._build``.

nvcc compiles each ``kernels/*.cu`` into ``kernels/<stem>.fatbin`` (machine code for
``FATBIN_SASS`` and ``FATBIN_PTX`` PTX, with ``FATBIN_OPTIONS``, all in ``_kernels.py``) and
writes ``kernels/prebuilt.json``: the sha256 of each source and fatbin, nvcc's version, the
options, the architectures and the command. nvcc's output depends on its version, the
options and the source text only (not on paths or time), so the same nvcc rebuilds the same
bytes; tests/test_cuda_prebuilt.py checks the manifest against the sources on every run, and
rebuilds and compares where nvcc is present. Needs nvcc (``--nvcc``, ``$NVCC``, or on PATH);
not used at run time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ._kernels import (
    FATBIN_OPTIONS,
    FATBIN_PTX,
    FATBIN_SASS,
    KERNEL_FILES,
    MANIFEST,
    _kernel_source,
    fatbin_name,
    kernel_names,
    source_sha256,
)

#: the repository's kernels/ (sources in, fatbins and manifest out)
KERNELS_DIR = Path(__file__).resolve().parents[2] / "kernels"
_VERSION = re.compile(r"release (\d+)\.(\d+), V(\d+\.\d+\.\d+)")


def nvcc_version(nvcc: str) -> tuple[int, int, str]:
    """(major, minor, "13.0.88") of ``nvcc --version``."""
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    m = _VERSION.search(out)
    if m is None:
        raise RuntimeError(f"cannot read nvcc's version from:\n{out}")
    return int(m[1]), int(m[2]), m[3]


def gencode() -> list[str]:
    """nvcc's -gencode options: SASS for every FATBIN_SASS arch, FATBIN_PTX as PTX."""
    codes = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in FATBIN_SASS]
    return [*codes, f"-gencode=arch={FATBIN_PTX},code={FATBIN_PTX}"]


def command(source: str, nvcc: str = "nvcc") -> list[str]:
    """The nvcc command that builds ``source``'s fatbin, run in the folder of the sources."""
    return [nvcc, "-fatbin", *gencode(), *FATBIN_OPTIONS, "-o", fatbin_name(source), source]


def build(out: Path, nvcc: str = "nvcc", sources=KERNEL_FILES, log=print) -> dict:
    """Compile ``sources`` (files of the repository's kernels/) into ``out``: one fatbin each
    and the manifest; returns the manifest. Each file is written whole or not at all."""
    major, minor, full = nvcc_version(nvcc)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    with tempfile.TemporaryDirectory(prefix="gpuflat-kernels-") as tmp:
        for source in sources:
            text = (KERNELS_DIR / source).read_text(encoding="utf-8")
            if text != _kernel_source(source):  # what the manifest's hash is taken of
                raise RuntimeError(
                    f"gpuflat.kernels does not resolve to {KERNELS_DIR} (an editable install "
                    "of another checkout?): the manifest would describe other sources"
                )
            shutil.copy2(KERNELS_DIR / source, Path(tmp) / source)
            cmd = command(source, nvcc)
            log(" ".join(cmd))
            res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
            blob = (Path(tmp) / fatbin_name(source)).read_bytes()
            files[source] = {
                "fatbin": fatbin_name(source),
                "source_sha256": source_sha256(source),
                "fatbin_sha256": hashlib.sha256(blob).hexdigest(),
                "bytes": len(blob),
                "kernels": list(kernel_names(source)),
                "command": " ".join(["nvcc", *cmd[1:]]),
            }
            _replace(out / fatbin_name(source), blob)
    manifest = {
        "about": (
            "the prebuilt CUDA kernels: `make kernels` (python -m gpuflat.backends._build) "
            "writes them and this file; tests/test_cuda_prebuilt.py checks both"
        ),
        "nvcc": full,
        # SASS of CUDA X.y loads under any driver of CUDA X; the driver compiles PTX of
        # CUDA X.y only from X.y on
        "min_driver_sass": major * 1000,
        "min_driver_ptx": major * 1000 + minor * 10,
        "sass": list(FATBIN_SASS),
        "ptx": FATBIN_PTX,
        "options": list(FATBIN_OPTIONS),
        "files": files,
    }
    _replace(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpuflat.backends._build", description=__doc__)
    ap.add_argument("--nvcc", default=os.environ.get("NVCC", "nvcc"), help="nvcc to run")
    ap.add_argument("--out", type=Path, default=KERNELS_DIR, help="folder to write into")
    args = ap.parse_args(argv)
    if shutil.which(args.nvcc) is None:
        print(f"{args.nvcc} not found: install a CUDA toolkit or pass --nvcc", file=sys.stderr)
        return 2
    manifest = build(args.out, args.nvcc)
    for source, entry in manifest["files"].items():
        n = len(entry["kernels"])
        print(f"{entry['fatbin']}: {entry['bytes']} bytes ({source}, {n} kernels)")
    print(f"{args.out / MANIFEST}: nvcc {manifest['nvcc']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
