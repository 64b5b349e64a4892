"""Vectors of 32 integer lanes for the sigma mask of ccdmask (``_numba_ccdmask._mask_rows``),
as numba intrinsics that emit LLVM vector code directly.

The mask slides a window along a row and keeps, per bin edge, how many of the window's
values lie below it: 32 counts updated and compared once per pixel. Written as loops over
the lanes, numba's code ran them 8 lanes at a time with a loop around (the vectoriser's
main loop takes 64), and kept them in memory; as one vector operation each, a pixel
costs a few instructions. The arrays are C-contiguous int16 or int32 (one type in a
call) with exactly ``LANES`` values along their last axis: the callers allocate them so
(nothing here checks the length), int16 where the counts stay below 2**15.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 32
_I32 = ir.IntType(32)
_ZERO = ir.Constant(ir.IntType(64), 0)


def _is_lanes(ty, ndim) -> bool:
    return (
        isinstance(ty, types.Array)
        and ty.dtype in (types.int16, types.int32)
        and ty.ndim == ndim
        and ty.layout == "C"
    )


def _vec(aryty):
    return ir.VectorType(ir.IntType(aryty.dtype.bitwidth), LANES)


def _pointer(context, builder, aryty, ary, inds):
    """The vector at ``ary[inds]`` (the lanes along the last axis)."""
    arr = context.make_array(aryty)(context, builder, ary)
    ptr = cgutils.get_item_pointer(context, builder, aryty, arr, inds, wraparound=False)
    return builder.bitcast(ptr, _vec(aryty).as_pointer())


def _splat(context, builder, value, ty, aryty):
    """A vector of ``value`` (an integer of numba type ``ty``) in every lane."""
    vec = _vec(aryty)
    value = context.cast(builder, value, ty, aryty.dtype)
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(_I32, 0))
    zeros = ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES)
    return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), zeros)


@intrinsic
def add_row_difference(typingctx, win, table, new, old):
    """``win[:] += table[new, :] - table[old, :]``."""
    if not (_is_lanes(win, 1) and _is_lanes(table, 2)):
        return None

    def codegen(context, builder, sig, args):
        w, t, n, o = args
        n = context.cast(builder, n, sig.args[2], types.intp)
        o = context.cast(builder, o, sig.args[3], types.intp)
        pw = _pointer(context, builder, sig.args[0], w, [_ZERO])
        pn = _pointer(context, builder, sig.args[1], t, [n, _ZERO])
        po = _pointer(context, builder, sig.args[1], t, [o, _ZERO])
        v = builder.add(builder.load(pw, align=2), builder.load(pn, align=2))
        builder.store(builder.sub(v, builder.load(po, align=2)), pw, align=2)
        return context.get_dummy_value()

    return types.void(win, table, new, old), codegen


@intrinsic
def count_at_most(typingctx, win, k):
    """How many lanes of ``win`` hold at most ``k``."""
    if not (_is_lanes(win, 1) and isinstance(k, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        w, k = args
        v = builder.load(_pointer(context, builder, sig.args[0], w, [_ZERO]), align=2)
        le = builder.icmp_signed("<=", v, _splat(context, builder, k, sig.args[1], sig.args[0]))
        return builder.zext(builder.ctpop(builder.bitcast(le, _I32)), ir.IntType(64))

    return types.int64(win, k), codegen


@intrinsic
def add_below(typingctx, table, row, x, y, edges):
    """``table[row, :] += (x < edges) - (y < edges)``: a value of bin ``x`` in, one of
    bin ``y`` out, counted under every edge above its bin."""
    if not (_is_lanes(table, 2) and _is_lanes(edges, 1)):
        return None

    def codegen(context, builder, sig, args):
        t, row, x, y, e = args
        row = context.cast(builder, row, sig.args[1], types.intp)
        pt = _pointer(context, builder, sig.args[0], t, [row, _ZERO])
        ev = builder.load(_pointer(context, builder, sig.args[4], e, [_ZERO]), align=2)
        gain = builder.icmp_signed("<", _splat(context, builder, x, sig.args[2], sig.args[4]), ev)
        loss = builder.icmp_signed("<", _splat(context, builder, y, sig.args[3], sig.args[4]), ev)
        vec = _vec(sig.args[0])
        v = builder.add(builder.load(pt, align=2), builder.zext(gain, vec))
        builder.store(builder.sub(v, builder.zext(loss, vec)), pt, align=2)
        return context.get_dummy_value()

    return types.void(table, row, x, y, edges), codegen
