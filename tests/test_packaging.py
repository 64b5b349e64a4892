"""What ``pip install .`` ships: every subpackage of gpuflat, and the CUDA kernels."""

from __future__ import annotations

from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_in_the_wheel():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "gpuflat").rglob("__init__.py")
    }
    assert on_disk - listed == set(), "subpackages missing from [tool.setuptools] packages"
    assert listed - on_disk == {"gpuflat.kernels"}
    assert conf["package-dir"]["gpuflat.kernels"] == "kernels"
