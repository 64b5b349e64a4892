"""Frame QA: which frames of a group to leave out, from their level and rejected fraction.

A frame is left out when its median level (raw ADU, before scaling) lies outside
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

    def __post_init__(self):
        if self.level_range is not None:
            low, high = self.level_range
            if not low < high:
                raise ValueError(f"level_range: LOW {low:g} must be below HIGH {high:g}")
        if not self.reject_factor > 1:
            raise ValueError(f"reject_factor must be > 1, got {self.reject_factor:g}")


def outliers(levels, rejected_fraction, qa: QAConfig) -> dict[int, str]:
    """Frame index -> why it is left out. ``levels``: per-frame median levels (or None)."""
    out = {}
    if qa.level_range is not None and levels is not None:
        low, high = qa.level_range
        for i, level in enumerate(levels):
            if not low <= level <= high:
                out[i] = f"level {level:.6g} outside the level range [{low:g}, {high:g}]"
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
