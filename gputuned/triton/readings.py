"""Triton's own numbers -> the cumulative stats a worker reports (pure).

Sources, per poll:
- its Prometheus metrics: requests by outcome (`nv_inference_request_success`, and
  `nv_inference_request_failure` by reason), pending requests, the cumulative request
  duration, and the latency summary (`summary_latencies=true`);
- its statistics extension: per batch size, how many batches ran and how long they took.

Latency. Triton keeps no latency histogram, and its summary's quantiles cover a sliding
minute: far too slow to judge a trial of a few seconds. Each poll interval's *mean* latency
is exact (the growth of the duration counter over the growth of the success counter). The
adapter spreads that interval's requests over the shape of the summary: quantile q sits at
the interval's mean times (summary quantile q / mean over the summary's minute). So a
change in latency shows in the next half second, and the tail keeps the proportions Triton
measured over the last minute. Exact: the counts, the mean. Estimated: the tail's shape,
which lags a change by up to a minute. Request traces would give every latency, but Triton
2.51 crashes (SIGSEGV) when a model is reloaded under load with tracing on (reproduced in
one or two reloads; eight reloads without tracing were clean), and reloading is how a knob
is applied.

Triton resets a model's statistics when the model is reloaded, so raw counters can fall.
`performance.Counters` turns them into totals that never fall, as Prometheus's rate() does: after a
drop, the new raw value is what happened since the reset. The failure reasons map onto the
worker's outcomes: BACKEND and OTHER are the server's fault (`failed`); REJECTED (the queue
policy turned it away) is `refused`; CANCELED (the client gave up) is `rejected`, never held
against a trial.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gputuned.control.histogram import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_SECONDS, Histogram
from gputuned.control.messages import HistogramReport, StatsReport

_OUTCOME_OF_FAILURE = {"BACKEND": "failed", "OTHER": "failed", "REJECTED": "refused", "CANCELED": "rejected"}
SUMMARY_SECONDS = 60.0  # the window of Triton's latency summaries (prometheus-cpp's default max age)


@dataclass(frozen=True)
class MetricsReading:
    """One model's figures from Triton's /metrics, summed over its versions."""

    success: float = 0.0
    failures: Mapping[str, float] = field(default_factory=dict)  # by our outcome: failed, refused, rejected
    pending: float = 0.0
    request_duration_us: float = 0.0  # cumulative
    latency_quantiles_us: Mapping[float, float] = field(default_factory=dict)  # the sliding-minute summary


def parse_metrics(text: str, model: str) -> MetricsReading:
    success = pending = duration = 0.0
    failures: dict[str, float] = {}
    quantiles: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model or sample.name not in (family.name, family.name + "_total"):
                continue  # another model, or a summary's _count and _sum
            name, value = family.name, float(sample.value)
            if name == "nv_inference_request_success":
                success += value
            elif name == "nv_inference_request_failure":
                outcome = _OUTCOME_OF_FAILURE.get(sample.labels.get("reason", "OTHER"), "failed")
                failures[outcome] = failures.get(outcome, 0.0) + value
            elif name == "nv_inference_pending_request_count":
                pending += value
            elif name == "nv_inference_request_duration_us":
                duration += value
            elif name == "nv_inference_request_summary_us" and "quantile" in sample.labels and not math.isnan(value):
                quantiles[float(sample.labels["quantile"])] = value
    return MetricsReading(success, failures, pending, duration, quantiles)


def raw_counters(metrics: MetricsReading, stats: Mapping[str, Any]) -> dict[str, float]:
    """The counters of one poll, named as `worker_stats` reads their totals: requests by
    outcome from the metrics, and per batch size ("batches:N", "batch_seconds:N") the batches
    run and the seconds they took from a statistics-extension entry."""
    raw = {"success": metrics.success, "duration_us": metrics.request_duration_us, **metrics.failures}
    for entry in stats.get("batch_stats") or ():
        size = int(entry["batch_size"])
        phases = [entry.get(phase) or {} for phase in ("compute_input", "compute_infer", "compute_output")]
        raw[f"batches:{size}"] = float(phases[1].get("count") or 0)
        raw[f"batch_seconds:{size}"] = sum(float(phase.get("ns") or 0) for phase in phases) / 1e9
    return raw


def quantile_observations(quantiles: Mapping[float, float], count: int) -> list[tuple[float, int]]:
    """`count` requests spread over latencies (seconds) so that they have these quantiles
    (seconds): the share between two quantiles sits at the upper one, the rest at the last."""
    observations, placed, below = [], 0, 0.0
    for q, seconds in sorted(quantiles.items()):
        share = min(round((q - below) * count), count - placed)
        if share > 0:
            observations.append((seconds, share))
            placed += share
        below = q
    if count > placed and quantiles:
        observations.append((max(quantiles.values()), count - placed))
    return observations


class LatencyEstimate:
    """The latency histogram the adapter reports, from the exact mean of each poll interval
    and the shape of Triton's one-minute summary (see the module docstring)."""

    def __init__(self, summary_seconds: float = SUMMARY_SECONDS) -> None:
        self._histogram = Histogram(LATENCY_BUCKETS_SECONDS)
        self._summary_seconds = summary_seconds
        self._history: collections.deque[tuple[float, float, float]] = collections.deque()  # (t, success, duration µs)

    def update(self, now: float, success: float, duration_us: float, quantiles_us: Mapping[float, float]) -> None:
        """`success` and `duration_us` are running totals (Counters); `quantiles_us` the summary's."""
        last = self._history[-1] if self._history else None
        self._history.append((now, success, duration_us))
        while self._history[0][0] < now - self._summary_seconds and len(self._history) > 2:
            self._history.popleft()
        if last is None or success <= last[1] or duration_us <= last[2]:
            return
        completed = int(success - last[1])
        mean = (duration_us - last[2]) / (success - last[1]) / 1e6
        first = self._history[0]
        minute_mean = (duration_us - first[2]) / (success - first[1]) / 1e6
        shape = {1.0: 1.0}  # without a summary, every request at the mean
        if quantiles_us and minute_mean > 0:
            shape = {q: value / 1e6 / minute_mean for q, value in quantiles_us.items()}
        for seconds, times in quantile_observations({q: mean * ratio for q, ratio in shape.items()}, completed):
            self._histogram.observe(seconds, times)

    def snapshot(self) -> HistogramReport:
        return self._histogram.snapshot()


def worker_stats(totals: Mapping[str, float], latency: HistogramReport, pending: float, instances: int) -> StatsReport:
    """A worker's stats report (control/messages.py) from the adapter's running totals."""
    batch_size = Histogram(BATCH_SIZE_BUCKETS)
    batches = busy = 0.0
    for name, value in totals.items():
        kind, _, size = name.partition(":")
        if kind == "batches" and value:
            batch_size.observe(int(size), int(value))
            batches += value
        elif kind == "batch_seconds":
            busy += value
    failed, refused, rejected = (int(totals.get(outcome, 0)) for outcome in ("failed", "refused", "rejected"))
    completed = int(totals.get("success", 0))
    return {
        "requests": completed + failed + refused + rejected,
        "completed": completed,
        "failed": failed,
        "refused": refused,
        "rejected": rejected,
        "oom": 0,
        "batches": int(batches),
        "pool_hits": 0,
        "pool_misses": 0,
        "h2d_bytes": 0,
        "lane_busy_seconds": busy,
        "queue_depth": int(pending),
        "lanes": instances,
        "latency_seconds": latency,
        "batch_size": batch_size.snapshot(),
    }
