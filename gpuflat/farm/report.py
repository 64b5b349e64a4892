"""The JSON report of a batch run: strict JSON (NaN and infinities as null), written
atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .._atomic import commit


def jsonable(obj):
    """``obj`` with NumPy scalars as Python numbers, non-finite floats as None, tuples as
    lists and anything else unknown as its text."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def write_report(path, report: dict) -> Path:
    """Write ``report`` as strict JSON (a killed run leaves the previous file, if any)."""
    text = json.dumps(jsonable(report), indent=2, allow_nan=False)
    return commit(Path(path), lambda tmp: tmp.write_text(text), overwrite=True)
