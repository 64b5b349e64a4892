"""Rewrite the generated code: ``python -m gpuflat.backends._generate``.

It writes ``_numba_merges.py`` (``_networks.render``), ccdmask's moving median
``_numba_ccdmask_net.py`` (``_median_net.render``), then the digests of the files that
depend on them (``_networks.DEPENDS_ON``), and the CUDA fast kernels, ``kernels/fast.cu``
(``_fast_cu.render``, from the same networks). tests/test_numba_fast.py and
tests/test_cuda_kernels.py check that the files in the tree are what this writes; after a
change to fast.cu, ``make kernels`` rebuilds its fatbin. Pure Python: nothing is compiled.
"""

from __future__ import annotations

import re

from . import _fast_cu, _median_net, _numba_fast
from ._networks import DEPENDS_ON, MERGES, render, source_digest


def main():
    text = render(_numba_fast._trow.py_func, _numba_fast.FAST_L)
    MERGES.write_text(text)
    print(f"{MERGES}: {len(text.splitlines())} lines")
    net = MERGES.with_name("_numba_ccdmask_net.py")
    text = _median_net.render()
    net.write_text(text)
    print(f"{net}: {len(text.splitlines())} lines")
    text = _fast_cu.render()
    _fast_cu.FAST_CU.write_text(text)
    print(f"{_fast_cu.FAST_CU}: {len(text.splitlines())} lines")
    for name in (
        "_numba_fast.py",
        "_numba.py",
        "_numba_grow.py",
        "_numba_ccdmask.py",
    ):  # each after the files it depends on
        path = MERGES.with_name(name)
        text = re.sub(
            r'^_DEPENDS_ON = "[0-9a-f]*"',
            f'_DEPENDS_ON = "{source_digest(DEPENDS_ON[name])}"',
            path.read_text(),
            count=1,
            flags=re.MULTILINE,
        )
        path.write_text(text)


if __name__ == "__main__":
    main()
