"""Summaries of repeated runs (one value per seed) shared by every protocol's result JSON."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["mean_std"]


def mean_std(values: Sequence[float]) -> dict[str, float | list[float]]:
    """{"mean", "std", "values"} of per-seed results: population std (0 for a single run), so one
    seed reports std 0 rather than NaN; `values` keeps every run for the JSON."""
    values = list(values)
    if not values:
        raise ValueError("mean_std needs at least one value (no seeds were run)")
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }
