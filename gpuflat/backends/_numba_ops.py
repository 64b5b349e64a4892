"""The compare-exchange of the numba fast path's networks in registers, as intrinsics.

``x, y = lo(x, y), hi(x, y)``: each side is one select on ``a < b``, so each result is one
of the inputs and a network permutes its values (one vminpd/vmaxpd each on x86). As
intrinsics rather than inlined numba functions they compile much faster: numba's inlining
of ~80 small functions per network inside the fast block cost minutes.
"""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic


def _select_op(larger):
    """A numba intrinsic for one side of a compare-exchange as a single select:
    ``a if a < b else b`` (or ``b if a < b else a`` when ``larger``), on two values of one
    float type."""

    @intrinsic
    def op(typingctx, a, b):
        if not (isinstance(a, types.Float) and a == b):
            return None
        sig = a(a, b)

        def codegen(context, builder, signature, args):
            a, b = args
            less = builder.fcmp_ordered("<", a, b)
            return builder.select(less, b, a) if larger else builder.select(less, a, b)

        return sig, codegen

    return op


lo = _select_op(False)
hi = _select_op(True)
