"""Throughput and latency quantiles over a window of the worker's cumulative stats (pure).

The worker reports cumulative counters and histograms; the difference between two
reports is what happened in between. Quantiles interpolate linearly inside the bucket,
as Prometheus's histogram_quantile does. `gputuned status`, sd_notify's STATUS line and
the tuners all read the worker through `measure`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from gputuned.control.messages import HistogramReport, StatsReport, stats_number


def bucket_counts(cumulative: list[int]) -> list[int]:
    """Cumulative counts (Prometheus's `le` form) -> the count in each bucket."""
    return [cumulative[0]] + [cumulative[i] - cumulative[i - 1] for i in range(1, len(cumulative))]


def histogram_delta(older: HistogramReport | None, newer: HistogramReport | None) -> tuple[list[float], list[int]] | None:
    """(bounds, per-bucket counts incl. +Inf) that arrived between two cumulative snapshots
    (each checked on arrival, `messages.read_histogram`); None unless both have the same buckets."""
    if older is None or newer is None or newer["bounds"] != older["bounds"]:
        return None
    bounds = newer["bounds"]
    cumulative = [n - o for n, o in zip(newer["cumulative"], older["cumulative"])]
    if any(c < 0 for c in cumulative):
        return None  # the worker restarted between the two: counters reset
    return bounds, bucket_counts(cumulative)


def within_objective(histogram: HistogramReport, threshold: float) -> float:
    """How many of a cumulative histogram's observations were at or below `threshold`
    (interpolated inside its bucket, as `fraction_within`)."""
    cumulative = histogram["cumulative"]
    share = fraction_within(histogram["bounds"], bucket_counts(cumulative), threshold)
    return 0.0 if share is None else share * cumulative[-1]


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


def fraction_within(bounds: list[float], counts: list[int], threshold: float) -> float | None:
    """Share of observations at or below `threshold`, interpolating inside its bucket."""
    total = sum(counts)
    if total == 0:
        return None
    within = 0.0
    lower = 0.0
    for index, count in enumerate(counts):
        upper = bounds[index] if index < len(bounds) else math.inf
        if threshold >= upper:
            within += count
        elif threshold > lower and upper != math.inf:
            within += count * (threshold - lower) / (upper - lower)
            break
        else:
            break
        lower = upper
    return within / total


@dataclass(frozen=True)
class Measurement:
    """One window of the worker's behaviour, everything a tuner decides on."""

    seconds: float
    arrival_rate: float  # requests received per second, whatever their outcome
    throughput: float  # completed per second
    goodput: float  # completed within the SLO per second
    p99: float | None  # seconds
    failed: int  # requests that failed by the server's fault in the window (the only ones held against a trial)
    mean_batch: float  # items per batch
    batch_seconds: float | None  # mean lane time per batch
    busy_ratio: float  # lane busy time / (window x lanes)
    queue_depth: float
    lanes: int
    oom: int
    pool_hits: int
    pool_misses: int
    device_busy: float | None = None  # GPU utilisation (CUDA) or host CPU busy (CPU), 0..1
    pcie_utilization: float | None = None
    p50: float | None = None  # seconds
    in_system: float = 0.0  # requests inside the worker on average (Little's law: latency-seconds per second)
    items_per_request: float = 0.0  # the input size: items (rows of the input tensor) per completed request
    refused: int = 0  # not taken now: queue full, not ready, draining
    rejected: int = 0  # the clients' mistakes: malformed, unknown model, wrong shape, oversize


def measure(
    older: StatsReport,
    newer: StatsReport,
    seconds: float,
    slo_seconds: float,
    device_busy: float | None = None,
    pcie_utilization: float | None = None,
) -> Measurement | None:
    """The window between two stats reports; None when it is empty or spans a restart."""
    if seconds <= 0:
        return None

    def delta(name: str) -> float:
        return (stats_number(newer, name) or 0.0) - (stats_number(older, name) or 0.0)

    if any(delta(name) < 0 for name in ("completed", "requests", "batches")):
        return None
    latency = histogram_delta(older.get("latency_seconds"), newer.get("latency_seconds"))
    completed = delta("completed")
    within = fraction_within(*latency, slo_seconds) if latency else None
    p99 = quantile(*latency, 0.99) if latency else None
    p50 = quantile(*latency, 0.5) if latency else None
    batches = delta("batches")
    items = _histogram_sum(newer, "batch_size") - _histogram_sum(older, "batch_size")
    busy = delta("lane_busy_seconds")
    lanes = int(newer.get("lanes", 1) or 1)
    return Measurement(
        seconds=seconds,
        arrival_rate=delta("requests") / seconds,
        throughput=completed / seconds,
        goodput=(within if within is not None else 0.0) * completed / seconds,
        p99=p99,
        failed=int(delta("failed")),
        mean_batch=items / batches if batches > 0 else 0.0,
        batch_seconds=busy / batches if batches > 0 else None,
        busy_ratio=busy / (seconds * lanes),
        queue_depth=float(newer.get("queue_depth", 0)),
        lanes=lanes,
        oom=int(delta("oom")),
        pool_hits=int(delta("pool_hits")),
        pool_misses=int(delta("pool_misses")),
        device_busy=device_busy,
        pcie_utilization=pcie_utilization,
        p50=p50,
        in_system=_latency_sum(older, newer) / seconds,
        items_per_request=items / completed if completed > 0 else 0.0,
        refused=int(delta("refused")),
        rejected=int(delta("rejected")),
    )


def _histogram_sum(report: StatsReport, name: Literal["latency_seconds", "batch_size"]) -> float:
    histogram = report.get(name)
    return 0.0 if histogram is None else histogram["sum"]


def _latency_sum(older: StatsReport, newer: StatsReport) -> float:
    """Seconds spent inside the worker by the requests completed between two reports."""
    return max(_histogram_sum(newer, "latency_seconds") - _histogram_sum(older, "latency_seconds"), 0.0)


class Counters:
    """Totals that never fall, from the raw counters of a server that a reload or a restart
    resets (Triton's, vLLM's), as Prometheus's rate() reads them: after a drop, the new raw
    value is what happened since the reset."""

    def __init__(self) -> None:
        self._raw: dict[str, float] = {}
        self.totals: dict[str, float] = {}

    def update(self, raw: Mapping[str, float]) -> None:
        for name, value in raw.items():
            last = self._raw.get(name, 0.0)
            increase = value - last if value >= last else value
            self.totals[name] = self.totals.get(name, 0.0) + increase
            self._raw[name] = value
