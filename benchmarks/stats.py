"""Summaries every benchmark prints: nearest-rank percentiles of one run's samples."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def percentiles(
    values: Sequence[float], points: Sequence[int] = (50, 95, 99), digits: int = 2
) -> dict[str, float]:
    """``{"n", "p<point>"..., "max", "mean"}`` rounded to ``digits``; {} without samples."""
    if not values:
        return {}
    ordered = sorted(values)
    last = len(ordered) - 1
    out: dict[str, float] = {"n": len(ordered)}
    for p in points:
        out[f"p{p}"] = round(ordered[min(last, round(p / 100 * last))], digits)
    out["max"] = round(ordered[-1], digits)
    out["mean"] = round(statistics.fmean(ordered), digits)
    return out
