"""The plain-number parameters every backend's combine kernel takes."""

from __future__ import annotations

from typing import NamedTuple

CENTERS = {"median": 0, "mean": 1}
DEVS = {"mad_std": 0, "std": 1}
METHODS = {"average": 0, "median": 1, "sum": 2}


class KernelParams(NamedTuple):
    """Per-pixel rejection and combine options, as numbers (see docs/kernel-contract.md)."""

    clip_scaled: int = 1
    min_value: float = float("-inf")
    max_value: float = float("inf")
    nlow: int = 0
    nhigh: int = 0
    sigma: int = 1
    center: int = 0
    dev: int = 0
    sigma_low: float = 5.0
    sigma_high: float = 5.0
    maxiters: int = 1
    method: int = 0
