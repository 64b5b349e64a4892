"""Memory a combination writes its results into (:class:`Planes`) and that a run lends
its groups one after the other (:class:`Workspace`)."""

from __future__ import annotations

import numpy as np


class Planes:
    """Where a combination's results go, band by band: here, whole planes in memory (the
    default). ``rows(r0, r1)`` lends the flat float image and uncertainty and int32 count
    of rows [r0, r1) for the backend to write into, ``done(r0, r1)`` says they are written,
    ``discard()`` that the combination failed. Another object with these methods (a
    product streamed to its file, ``_products.StreamedProduct``) takes every band's rows
    instead (and may still be storing the last ones when the combination returns) and has
    no planes."""

    def __init__(self, shape, dtype):
        self.image = np.empty(shape, dtype)
        self.uncertainty = np.empty(shape, dtype)
        self.count = np.empty(shape, np.int32)

    def rows(self, r0, r1):
        return tuple(a[r0:r1].reshape(-1) for a in (self.image, self.uncertainty, self.count))

    def done(self, r0, r1):
        pass

    def discard(self):
        pass


class Workspace:
    """Memory reused from one combination to the next (the groups of a run): the stack of
    every combination comes from here (the whole stack, or pass 1's frames and pass 2's
    band buffers), so that the next group's stack (of the same size or smaller) is already
    mapped instead of fresh pages faulted in again (0.1 s of a 6-group night). It holds one
    stack, the largest allocation of a combination anyway, until it is dropped. Likewise
    the buffers of the results streamed to a run's products (:meth:`results`), two in
    turn: a product may still be storing its last bands while the next group combines.

    ``busy_cores``: how many cores the run keeps busy beside the combination at a given
    moment (its product writer, finishing the previous group); pass 1 measures the levels
    on the others."""

    def __init__(self, busy_cores=lambda: 0):
        self._bytes = None
        self._results, self._users, self._turn = [None, None], [None, None], 0
        self.busy_cores = busy_cores

    def stack(self, size: int, dtype) -> np.ndarray:
        """A 1-D array of ``size`` elements of ``dtype`` (its contents are garbage)."""
        nbytes = size * np.dtype(dtype).itemsize
        if self._bytes is None or self._bytes.size < nbytes:
            self._bytes = None  # the old one goes before the new one comes
            self._bytes = np.empty(nbytes, np.uint8)
        return self._bytes[:nbytes].view(dtype)

    def results(self, nbytes: int, user) -> np.ndarray:
        """``nbytes`` bytes for a combination's results: the older of two buffers, once
        the call that its last borrower gave (``user``, here the new one's) returns, that
        is, once that borrower is done with it (a product discarded by QA, or one whose
        group failed, was never waited for by the run's writer)."""
        k, self._turn = self._turn, 1 - self._turn
        if self._users[k] is not None:
            self._users[k]()
        self._users[k] = user
        if self._results[k] is None or self._results[k].size < nbytes:
            self._results[k] = None
            self._results[k] = np.empty(nbytes, np.uint8)
        return self._results[k][:nbytes]
