"""Throughput and latency quantiles over a window of the worker's cumulative stats (pure).

The worker reports cumulative counters and histograms; the difference between two
reports is what happened in between. Quantiles interpolate linearly inside the bucket,
as Prometheus's histogram_quantile does. `gputuned status`, sd_notify's STATUS line and
the tuners all read the worker through these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WindowPerformance:
    seconds: float
    completed: int
    failed: int
    throughput: float  # completed requests per second
    p50: float | None  # seconds
    p99: float | None


def histogram_delta(older: dict[str, Any], newer: dict[str, Any]) -> tuple[list[float], list[int]] | None:
    """(bounds, per-bucket counts incl. +Inf) that arrived between two cumulative snapshots."""
    bounds = newer.get("bounds")
    if bounds != older.get("bounds") or not isinstance(bounds, list):
        return None
    new, old = newer.get("cumulative"), older.get("cumulative")
    if not isinstance(new, list) or not isinstance(old, list) or len(new) != len(old) or len(new) != len(bounds) + 1:
        return None
    cumulative = [n - o for n, o in zip(new, old)]
    if any(c < 0 for c in cumulative):
        return None  # the worker restarted between the two: counters reset
    counts = [cumulative[0]] + [cumulative[i] - cumulative[i - 1] for i in range(1, len(cumulative))]
    return bounds, counts


def quantile(bounds: list[float], counts: list[int], q: float) -> float | None:
    """The q-quantile of bucketed observations; the +Inf bucket answers with the last bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index == len(bounds):
                return bounds[-1]
            lower = bounds[index - 1] if index > 0 else 0.0
            return lower + (bounds[index] - lower) * (rank - seen) / count
        seen += count
    return bounds[-1]


def window_performance(older: dict[str, Any], newer: dict[str, Any], seconds: float) -> WindowPerformance | None:
    """What the worker did between two stats reports `seconds` apart; None across a restart."""
    if seconds <= 0:
        return None
    completed = newer.get("completed", 0) - older.get("completed", 0)
    failed = newer.get("failed", 0) - older.get("failed", 0)
    if completed < 0 or failed < 0:
        return None
    p50 = p99 = None
    delta = histogram_delta(older.get("latency_seconds") or {}, newer.get("latency_seconds") or {})
    if delta is not None:
        p50, p99 = quantile(*delta, 0.5), quantile(*delta, 0.99)
    return WindowPerformance(seconds, completed, failed, completed / seconds, p50, p99)
