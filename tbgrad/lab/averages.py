"""Averages of run figures (plain numpy, no plotting or TensorFlow)."""

from __future__ import annotations

import math

import numpy as np


def geomean(values) -> float:
    """The geometric mean of the positive values (None and values <= 0 are
    skipped); NaN if there are none."""
    values = np.array([v for v in values if v is not None and v > 0], dtype=float)
    return float(np.exp(np.mean(np.log(values)))) if values.size else math.nan
