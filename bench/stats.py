"""Figures the benchmarks share: the nearest-rank percentile of a sample."""

from __future__ import annotations

import math


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value at least `pct` percent of the sample reach."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
