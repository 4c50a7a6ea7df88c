"""Metrics as JSON: numpy values made plain, NaN and inf made null."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def to_jsonable(obj: Any) -> Any:
    """Recursively turn numpy scalars/arrays into Python values and NaN/inf into None."""
    if isinstance(obj, Mapping):
        return {(to_jsonable(k) if isinstance(k, np.generic) else k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj
