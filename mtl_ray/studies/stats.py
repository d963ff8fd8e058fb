"""The numbers every study reports: Δm % (Maninis et al. 2019) and a mean with its spread over seeds."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from mtl_ray.model.metrics import METRIC


def delta_m(mtl: dict[str, dict], stl: dict[str, dict], metric: str = METRIC) -> float | None:
    """Δm % over the tasks where both sides have the metric (None if no task has)."""
    gains = [
        (mtl[t][metric] - stl[t][metric]) / stl[t][metric] * 100
        for t in stl
        if mtl.get(t, {}).get(metric) is not None and stl[t].get(metric)
    ]
    return sum(gains) / len(gains) if gains else None


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values that exist (std None for fewer than two)."""
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None
