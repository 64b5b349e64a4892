"""A kernel's work in parts on several threads: the numba kernels release the GIL, so
plain Python threads run them side by side.

The backends use this instead of numba's ``parallel=True`` regions: numba lowers such a
region as a function of its own and optimises, inside it, every function the region
calls once more, which made up a third of a kernel's first compile (and a region costs
that for each specialisation). The work is split as a static ``prange`` schedule splits
it, into ``numba.get_num_threads()`` parts (so ``numba.set_num_threads`` still sets how
many cores a kernel takes).
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numba


def parts() -> int:
    """How many parts a kernel is split into: numba's thread count for this thread."""
    return numba.get_num_threads()


def run_parts(work, count: int) -> list:
    """``[work(0), ..., work(count - 1)]``: part 0 on the calling thread, the others on
    the pool's threads at the same time."""
    if count <= 1:
        return [work(0)] if count == 1 else []
    others = [_pool().submit(work, t) for t in range(1, count)]
    first = work(0)
    return [first, *(f.result() for f in others)]


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(1, numba.config.NUMBA_NUM_THREADS - 1), "gpuflat-kernel")
