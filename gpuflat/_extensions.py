"""Naming extensions of multi-extension files (validated once, at the boundary) and
matching them across files by (EXTNAME, EXTVER), never by position."""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Sequence

from astropy.io import fits

from ._frames import ext_key, ext_label, is_image_hdu
from .errors import FrameReadError, ShapeMismatchError

SCALE_PER = ("extension", "exposure")


# --------------------------------------------------------------------------------------------
# Naming extensions: validated once, at the boundary
# --------------------------------------------------------------------------------------------


def parse_ext_list(value, *, param="ext"):
    """``None`` or a tuple of (EXTNAME upper case, EXTVER or None).

    Accepts ``"CCD1"``, ``"CCD1,CCD2"``, ``"CCD1,2"`` (a number after a name is that name's
    EXTVER), a sequence of such strings or of ``(EXTNAME, EXTVER)`` pairs.
    """
    if value is None:
        return None
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, Sequence) and not isinstance(value, bytes):
        items = list(value)
    else:
        raise TypeError(
            f"{param} must be an extension name, 'NAME,EXTVER', or a sequence of them; "
            f"got {type(value).__name__}"
        )
    if isinstance(value, tuple) and len(value) == 2 and _is_version(value[1]):
        items = [value]  # one (EXTNAME, EXTVER) pair
    out = []
    for item in items:
        if isinstance(item, tuple):
            if len(item) != 2 or not isinstance(item[0], str) or not _is_version(item[1]):
                raise TypeError(f"{param}: {item!r} is not an (EXTNAME, EXTVER) pair")
            out.append((*_name(item[0], param, value), int(item[1])))
            continue
        if not isinstance(item, str):
            raise TypeError(f"{param}: {item!r} is not an extension name")
        tokens = [t.strip() for t in item.split(",")]
        for t in tokens:
            if t.isdigit():
                if not out or out[-1][1] is not None:
                    raise ValueError(
                        f"{param} {value!r}: {t} is not an extension name "
                        "(a number names the EXTVER of the name before it, as in CCD1,2)"
                    )
                out[-1] = (out[-1][0], int(t))
            else:
                out.append((*_name(t, param, value), None))
    if not out:
        raise ValueError(f"{param} {value!r}: names no extension")
    if len(set(out)) != len(out):
        raise ValueError(f"{param} {value!r}: names an extension twice")
    return tuple(out)


def parse_one_ext(value, *, param="ext"):
    """For :func:`gpuflat.combine`: None, an HDU index, or one (EXTNAME, EXTVER or None)."""
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{param} must be an HDU index >= 0 or an extension name, got {value}")
        return int(value)
    specs = parse_ext_list(value, param=param)
    if len(specs) != 1:
        raise ValueError(f"{param} {value!r}: names {len(specs)} extensions, combine takes one")
    return specs[0]


def _name(text, param, value):
    name = text.strip().upper()
    if not name or any(c in name for c in "'\"[]") or not name.isprintable():
        raise ValueError(f"{param} {value!r}: {text!r} is not a valid EXTNAME")
    return (name,)


def _is_version(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0


def check_scale_per(value):
    if not isinstance(value, str) or value not in SCALE_PER:
        raise ValueError(
            f"scale_per must be one of {', '.join(map(repr, SCALE_PER))}; got {value!r}"
        )
    return value


# --------------------------------------------------------------------------------------------
# Matching extensions across files
# --------------------------------------------------------------------------------------------


def image_extensions(path):
    """((EXTNAME, EXTVER), HDU index, shape) of every 2-D image HDU of a file, in order."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False) as hdul:
                return tuple(
                    (ext_key(h, i), i, tuple(int(s) for s in h.shape))
                    for i, h in enumerate(hdul)
                    if is_image_hdu(h)
                )
    except OSError as exc:
        raise FrameReadError(f"{path}: cannot read ({exc})") from None


def select_extensions(path, available, specs):
    """The entries of ``available`` (one file's image extensions) that ``specs`` names, in
    the file's order; every extension when ``specs`` is None. A name the file does not have
    is a :class:`FrameReadError` naming the file and the extension."""
    if specs is None:
        return list(available)
    chosen = set()
    for name, ver in specs:
        hits = [e for e in available if e[0][0] == name and ver in (None, e[0][1])]
        if not hits:
            have = ", ".join(ext_label(e[0]) for e in available) or "none"
            raise FrameReadError(f"{path}: no extension {ext_label((name, ver))} (it has {have})")
        if len(hits) > 1:
            raise FrameReadError(
                f"{path}: {len(hits)} extensions named {name}; name one as {name},EXTVER"
            )
        chosen.add(hits[0][0])
    return [e for e in available if e[0] in chosen]


def match_extensions(paths, extension_lists, specs):
    """``[(key, [HDU index in each file], shape)]`` in the first file's order.

    Extensions are matched by (EXTNAME, EXTVER); one missing from a file, or of another
    shape, is an error naming the file and the extension."""
    chosen = select_extensions(paths[0], extension_lists[0], specs)
    plan = [(key, [index], shape) for key, index, shape in chosen]
    for path, available in zip(paths[1:], extension_lists[1:], strict=True):
        by_key = {key: (index, shape) for key, index, shape in available}
        for key, indices, shape in plan:
            if key not in by_key:
                raise FrameReadError(
                    f"{path}: no extension {ext_label(key)} (the first file, "
                    f"{os.path.basename(paths[0])}, has it)"
                )
            index, other = by_key[key]
            if other != shape:
                raise ShapeMismatchError(
                    f"{path}: extension {ext_label(key)} is {other[0]}x{other[1]}, in "
                    f"{os.path.basename(paths[0])} it is {shape[0]}x{shape[1]}"
                )
            indices.append(index)
    return plan
