"""Frame QA: which frames of a group to leave out, from their level and rejected fraction.

A frame is left out as saturated, whatever the size of its group, when its median level is
at or above its saturation limit (:func:`saturation_limit`): the header's ``SATURATE``, or
95% of the full scale of the stored integer type, the lower of the two (65535 x 0.95 =
62258 for unsigned 16-bit data, BITPIX 16 with BZERO 32768). The margin: a flat whose
median is that close to the converter's end has a large share of its pixels clipped at the
top (the illumination varies by more than 5% across most detectors), and is beyond the
linear range of any common CCD or CMOS sensor; a bias level below 5% of the full scale,
when it is subtracted before the levels are measured, still leaves such a frame above the
limit. Floating-point data without ``SATURATE`` have no limit (their type says nothing of
the converter's range): ``--level-range`` sets one.

With ``--saturation LEVEL|KEYWORD`` (raw ADU, e.g. ``SATURATE``), saturated pixels are
masked in every frame (:mod:`gpuflat._sources`), and a frame with more than
``max_saturated`` (``--max-saturated``, default 1%) of its pixels at or above the level is
left out too: its median may be fine, but a large saturated area (a bright star's bleed, a
sky flat taken too early) leaves too little of it.

A frame is also left out when its median level (raw ADU, before scaling) lies outside
``level_range`` (saturated or too faint twilight flats), or when the fraction of its pixels
that the rejection threw away is far above the rest of its group: above ``reject_floor``,
above ``reject_factor`` times the group's median fraction, and above that median plus five
times the fractions' spread (1.4826 x their MAD). The spread term keeps a smooth trend
across a twilight sequence (fainter sky, relatively brighter stars, more rejected pixels)
from flagging its last frame. The test needs at least three frames (with two there is no
"rest" to compare with).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QAConfig:
    level_range: tuple[float, float] | None = None
    reject_factor: float = 10.0
    reject_floor: float = 0.01
    #: a frame with more than this fraction of its pixels at or above the saturation level
    #: (``--saturation``) is left out
    max_saturated: float = 0.01

    def __post_init__(self):
        if self.level_range is not None:
            low, high = self.level_range
            if not low < high:
                raise ValueError(f"level_range: LOW {low:g} must be below HIGH {high:g}")
        if not self.reject_factor > 1:
            raise ValueError(f"reject_factor must be > 1, got {self.reject_factor:g}")
        if not 0 <= self.max_saturated <= 1:
            raise ValueError(
                f"max_saturated must be a fraction from 0 to 1, got {self.max_saturated:g}"
            )


#: a frame whose median level is at or above this fraction of its stored integer type's
#: full scale is saturated (see the module's notes)
SATURATION_FRACTION = 0.95


def saturation_limit(header, gain=None) -> tuple[float, str] | None:
    """The median level at or above which a frame is saturated, and where that limit comes
    from, from its header: ``SATURATE``, and ``SATURATION_FRACTION`` of the full scale of
    the stored integer type (BITPIX 8: 0-255; 16, 32, 64: signed, then BSCALE and BZERO),
    the lower of the two; None for floating-point data without ``SATURATE``. ``gain`` (a
    number, when the levels are measured after calibration multiplied the data by it)
    scales the limit alike."""
    limits = []
    saturate = header.get("SATURATE")
    if isinstance(saturate, (int, float)) and not isinstance(saturate, bool) and saturate > 0:
        limits.append((float(saturate), f"SATURATE = {saturate:g}"))
    bitpix = header.get("BITPIX")
    if bitpix in (8, 16, 32, 64):
        lo, hi = (0, 255) if bitpix == 8 else (-(2 ** (bitpix - 1)), 2 ** (bitpix - 1) - 1)
        bscale, bzero = float(header.get("BSCALE", 1) or 1), float(header.get("BZERO", 0) or 0)
        top = max(lo * bscale + bzero, hi * bscale + bzero)
        if top > 0:
            limits.append((
                SATURATION_FRACTION * top,
                f"{SATURATION_FRACTION:.0%} of the {bitpix}-bit data's full scale {top:g}",
            ))  # fmt: skip
    if not limits:
        return None
    limit, why = min(limits)
    if gain is not None:
        limit, why = limit * gain, f"{why}, times the gain {gain:g}"
    return limit, why


def outliers(
    levels, rejected_fraction, qa: QAConfig, limits=None, saturated=None
) -> dict[int, str]:
    """Frame index -> why it is left out. ``levels``: per-frame median levels (or None);
    ``limits``: per-frame saturation limits (``saturation_limit``'s, or None each);
    ``saturated``: per-frame fractions of pixels at or above ``--saturation`` (or None)."""
    out = {}
    for i, f in enumerate(() if saturated is None else saturated):
        if f > qa.max_saturated:
            out[i] = (
                f"saturated: {100 * f:.3g}% of its pixels at or above the saturation level "
                f"(--max-saturated {100 * qa.max_saturated:g}%)"
            )
    if limits is not None and levels is not None:
        for i, (level, limit) in enumerate(zip(levels, limits, strict=True)):
            if limit is not None and level >= limit[0] and i not in out:
                out[i] = f"saturated: median level {level:.6g} >= {limit[0]:.6g} ({limit[1]})"
    if qa.level_range is not None and levels is not None:
        low, high = qa.level_range
        for i, level in enumerate(levels):
            if i in out or low <= level <= high:
                continue
            out[i] = f"level {level:.6g} outside the level range [{low:g}, {high:g}]"
            out[i] += ": saturated or non-linear" if level > high else ": too faint"
    if rejected_fraction is not None and len(rejected_fraction) >= 3:
        fractions = np.asarray(rejected_fraction, np.float64)
        typical = float(np.median(fractions))
        spread = 1.482602218505602 * float(np.median(np.abs(fractions - typical)))
        limit = max(qa.reject_floor, qa.reject_factor * typical, typical + 5 * spread)
        for i, f in enumerate(rejected_fraction):
            if f > limit and i not in out:
                out[i] = (
                    f"{100 * f:.3g}% of its pixels rejected, the group's median is "
                    f"{100 * typical:.3g}% (limit {100 * limit:.3g}%)"
                )
    return out
