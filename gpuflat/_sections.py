"""FITS-style image sections (``[1:2048,:]``: 1-based, inclusive, columns first) and the
other calibration values parsed at the boundary (:mod:`gpuflat._calibrate`)."""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

from .errors import CalibrationError

#: the header keywords of the sections, dropped from calibrated frames' headers
SECTION_KEYS = ("BIASSEC", "TRIMSEC", "DATASEC")
KEYWORD = re.compile(r"[A-Z0-9_-]{1,8}")
_RANGE = re.compile(r"(\d+):(\d+)|(\d+)|([*:])")


@dataclass(frozen=True)
class Section:
    """A parsed FITS section: 0-based half-open (start, stop) of the columns and the rows,
    None for a whole axis."""

    text: str
    cols: tuple[int, int] | None
    rows: tuple[int, int] | None

    def box(self, shape, what, name) -> tuple[int, int, int, int]:
        """(r0, r1, c0, c1) within a frame of ``shape``, or a CalibrationError naming it."""
        ny, nx = shape
        r0, r1 = self.rows or (0, ny)
        c0, c1 = self.cols or (0, nx)
        if r1 > ny or c1 > nx:
            raise CalibrationError(
                f"{name}: {what} {self.text} lies outside the frame ({nx} columns x {ny} rows)"
            )
        return r0, r1, c0, c1


def parse_section(text, param) -> Section:
    """``[X1:X2,Y1:Y2]`` (1-based, inclusive, columns first; ``*`` or ``:`` a whole axis)."""
    s = str(text).replace(" ", "")
    hint = "a section is [X1:X2,Y1:Y2], 1-based and inclusive, columns first (e.g. [1:2048,:])"
    parts = s[1:-1].split(",") if s.startswith("[") and s.endswith("]") else []
    if len(parts) != 2:
        raise ValueError(f"{param} {text!r}: {hint}")
    ranges = []
    for part in parts:
        m = _RANGE.fullmatch(part)
        if m is None:
            raise ValueError(f"{param} {text!r}: {part!r} is not a range; {hint}")
        if m.group(4):
            ranges.append(None)
            continue
        a, b = (int(m.group(1)), int(m.group(2))) if m.group(1) else (int(m.group(3)),) * 2
        if a < 1 or b < a:
            raise ValueError(
                f"{param} {text!r}: {part} must go up from 1 (flipped sections are not taken)"
            )
        ranges.append((a - 1, b))
    return Section(s, ranges[0], ranges[1])


def section_or_keyword(value, param):
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(
            f"{param} must be a section or a header keyword, got {type(value).__name__}"
        )
    if value.strip().startswith("["):
        return parse_section(value, param)
    key = value.strip().upper()
    if not KEYWORD.fullmatch(key):
        raise ValueError(
            f"{param} {value!r}: expected a section like [2049:2080,:] (1-based, inclusive, "
            "columns first) or the header keyword that holds one (BIASSEC, TRIMSEC, DATASEC)"
        )
    return key


def parse_gain(value):
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            key = value.strip().upper()
            if not KEYWORD.fullmatch(key):
                raise ValueError(
                    f"gain {value!r}: expected a number (e-/ADU) or a header keyword (GAIN)"
                ) from None
            return key
    else:
        raise TypeError(f"gain must be a number or a header keyword, got {type(value).__name__}")
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"gain must be a finite number > 0 (e-/ADU), got {value!r}")
    return number
