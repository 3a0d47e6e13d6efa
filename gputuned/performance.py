"""Throughput and latency quantiles over a window of the worker's cumulative stats (pure).

The worker reports cumulative counters and histograms; the difference between two
reports is what happened in between. Quantiles interpolate linearly inside the bucket,
as Prometheus's histogram_quantile does. `gputuned status`, sd_notify's STATUS line and
the tuners all read the worker through `measure`.

Goodput. For a worker judged by request latency: the requests completed within the p99
SLO (interpolated inside the SLO's bucket). For a generative (LLM) worker, which reports
time-to-first-token (TTFT) and per-request time-per-output-token (TPOT) histograms: the
requests that met both objectives, the attainment vLLM's serving benchmark and DistServe
count. The two histograms are separate distributions, so the count is a bound that never
exceeds the truth: the requests within the TPOT objective, less every request that missed
the TTFT objective (as if each TTFT miss were a TPOT hit), and each "within" counted only up
to the largest bucket bound at or below its objective (`met_generative`). An objective on a
bucket bound (vLLM's: TTFT 0.1, 0.25, 0.5, 1, 2.5 s...; TPOT 0.025, 0.05, 0.1, 0.15 s...)
loses nothing to the buckets.

The tail the guard holds under the objectives is `tail_ratio`; above 1 an objective is
breached. For a worker judged by request latency it is its p99 over the SLO. For a
generative worker it is the worse of the shares of requests over the TTFT and the TPOT
objective, each as a multiple of the 1% a p99 objective allows: counted at the objective,
exact on a bucket bound, where a p99 read inside a 25 ms-wide bucket is not.
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
class GenerativeObjectives:
    """A generative worker's objectives, in seconds."""

    ttft: float
    tpot: float


def within_bound(histogram: HistogramReport, threshold: float) -> int:
    """Observations certainly at or below `threshold`: the cumulative count at the largest
    bucket bound not above it (never more than the truth)."""
    count = 0
    for bound, cumulative in zip(histogram["bounds"], histogram["cumulative"]):
        if bound > threshold:
            break
        count = cumulative
    return count


def met_generative(ttft: HistogramReport, tpot: HistogramReport, objectives: GenerativeObjectives) -> int:
    """Requests that met both objectives, at least (see the module docstring); `ttft` and
    `tpot` are histograms of the same requests (deltas over one window, or cumulative)."""
    ttft_misses = ttft["cumulative"][-1] - within_bound(ttft, objectives.ttft)
    return max(within_bound(tpot, objectives.tpot) - ttft_misses, 0)


def _delta_histogram(older: HistogramReport | None, newer: HistogramReport | None) -> HistogramReport | None:
    """What arrived between two cumulative snapshots, itself in cumulative form."""
    delta = histogram_delta(older, newer)
    if delta is None or newer is None or older is None:
        return None
    bounds, counts = delta
    cumulative = [sum(counts[: index + 1]) for index in range(len(counts))]
    return {"bounds": bounds, "cumulative": cumulative, "sum": newer["sum"] - older["sum"], "count": cumulative[-1]}


@dataclass(frozen=True)
class Generation:
    """What a generative worker did in a window, beside the request figures."""

    output_tokens_per_second: float
    prompt_tokens_per_second: float
    ttft_p50: float | None
    ttft_p99: float | None
    tpot_p50: float | None
    tpot_p99: float | None
    preemptions: int
    running: float  # sequences running, on average over the window (Little's law: time spent past the queue per second)
    waiting: float  # requests waiting for admission, on average (queue time per second)
    kv_cache_usage: float  # at the window's end, 0..1
    aborted: int
    # The share of requests over each objective, as a multiple of the 1% a p99 objective
    # allows (above 1: breached), counted at the objective itself rather than read off a p99
    # interpolated inside a wide bucket (vLLM's TPOT buckets are 25 and 50 ms wide).
    ttft_over: float | None = None
    tpot_over: float | None = None


@dataclass(frozen=True)
class Tokens:
    """A variable-length model's tokens over a window: its requests' own, and the padding
    computed with them (a batch is padded to its longest request)."""

    per_second: float  # the requests' own tokens computed per second
    per_item: float  # mean tokens of an item
    batch_tokens: float  # mean tokens a batch computed, padding included (what the token budget bounds)
    padding_share: float  # padding / all tokens computed, 0..1


@dataclass(frozen=True)
class DeviceReadings:
    """What the collectors saw of a worker's device over a window (None: not known)."""

    busy: float | None = None  # GPU utilisation (CUDA) or host CPU busy (CPU), 0..1
    pcie_utilization: float | None = None
    sm_active: float | None = None  # share of the GPU's SMs busy (GPM), 0..1
    watts: float | None = None  # GPU energy attributed to the worker per second


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
    tail_ratio: float | None = None  # the tail over its objective (module docstring); None: p99 over the SLO
    generation: Generation | None = None  # a generative worker's tokens and per-token latency
    tokens: Tokens | None = None  # a variable-length model's
    sm_active: float | None = None  # share of the GPU's SMs busy (GPM), 0..1
    watts: float | None = None  # GPU energy attributed to the worker per second

    @property
    def joules_per_request(self) -> float | None:
        """GPU energy per completed request; None without an energy reading or completions."""
        return self.watts / self.throughput if self.watts is not None and self.throughput > 0 else None

    @property
    def joules_per_token(self) -> float | None:
        """A generative worker's GPU energy per generated token; None without an energy reading or tokens."""
        generation = self.generation
        if self.watts is None or generation is None or generation.output_tokens_per_second <= 0:
            return None
        return self.watts / generation.output_tokens_per_second

    @property
    def goodput_per_watt(self) -> float:
        """Requests within the SLO per joule of the worker's GPU energy; 0 without an energy reading."""
        return self.goodput / self.watts if self.watts else 0.0


def over_objective(window: Measurement, slo_seconds: float) -> float | None:
    """How far the window's tail is over its objective (above 1: breached); None without latencies."""
    if window.tail_ratio is not None:
        return window.tail_ratio
    return None if window.p99 is None else window.p99 / slo_seconds


def describe_tail(window: Measurement) -> str:
    """The tail the objectives judge, for decisions and logs: "p99 146.8 ms", or for a
    generative worker "TTFT p99 1200.0 ms, TPOT p99 40.0 ms"."""
    generation = window.generation
    if generation is not None:
        return f"TTFT p99 {format_ms(generation.ttft_p99)}, TPOT p99 {format_ms(generation.tpot_p99)}"
    return f"p99 {format_ms(window.p99)}"


def format_ms(seconds: float | None) -> str:
    """Seconds as milliseconds for people ("-" when unknown)."""
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def measure(
    older: StatsReport,
    newer: StatsReport,
    seconds: float,
    slo_seconds: float,
    device: DeviceReadings = DeviceReadings(),
    generative: GenerativeObjectives | None = None,
) -> Measurement | None:
    """The window between two stats reports; None when it is empty or spans a restart.
    A worker that reports TTFT and TPOT histograms is judged by `generative` objectives."""
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
    goodput = (within if within is not None else 0.0) * completed / seconds
    generation, tail_ratio = None, None
    ttft = _delta_histogram(older.get("ttft_seconds"), newer.get("ttft_seconds"))
    tpot = _delta_histogram(older.get("tpot_seconds"), newer.get("tpot_seconds"))
    if generative is not None and ttft is not None and tpot is not None:
        goodput = met_generative(ttft, tpot, generative) / seconds
        generation = _generation(older, newer, seconds, ttft, tpot, generative)
        ratios = [ratio for ratio in (generation.ttft_over, generation.tpot_over) if ratio is not None]
        tail_ratio = max(ratios) if ratios else None
    return Measurement(
        seconds=seconds,
        arrival_rate=delta("requests") / seconds,
        throughput=completed / seconds,
        goodput=goodput,
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
        device_busy=device.busy,
        pcie_utilization=device.pcie_utilization,
        p50=p50,
        in_system=_latency_sum(older, newer) / seconds,
        items_per_request=items / completed if completed > 0 else 0.0,
        refused=int(delta("refused")),
        rejected=int(delta("rejected")),
        tail_ratio=tail_ratio,
        generation=generation,
        tokens=_tokens(delta("tokens"), delta("padding_tokens"), items, batches, seconds) if "tokens" in newer else None,
        sm_active=device.sm_active,
        watts=device.watts,
    )


def _tokens(tokens: float, padding: float, items: float, batches: float, seconds: float) -> Tokens:
    computed = tokens + padding
    return Tokens(
        per_second=tokens / seconds,
        per_item=tokens / items if items > 0 else 0.0,
        batch_tokens=computed / batches if batches > 0 else 0.0,
        padding_share=padding / computed if computed > 0 else 0.0,
    )


P99_ALLOWANCE = 0.01  # a p99 objective lets 1% of requests exceed it


def _over(histogram: HistogramReport, objective: float) -> float | None:
    """The share of observations over `objective` (interpolated inside its bucket, exact on a
    bound) in units of the 1% a p99 objective allows; None without observations."""
    within = fraction_within(histogram["bounds"], bucket_counts(histogram["cumulative"]), objective)
    return None if within is None else (1.0 - within) / P99_ALLOWANCE


def _generation(
    older: StatsReport,
    newer: StatsReport,
    seconds: float,
    ttft: HistogramReport,
    tpot: HistogramReport,
    objectives: GenerativeObjectives,
) -> Generation:
    def delta(name: str) -> float:
        return (stats_number(newer, name) or 0.0) - (stats_number(older, name) or 0.0)

    def at(histogram: HistogramReport, q: float) -> float | None:
        return quantile(histogram["bounds"], bucket_counts(histogram["cumulative"]), q)

    ttft_p99, tpot_p99 = at(ttft, 0.99), at(tpot, 0.99)
    queue_older, queue_newer = older.get("queue_seconds"), newer.get("queue_seconds")
    queued = max(queue_newer["sum"] - queue_older["sum"], 0.0) if queue_older and queue_newer else 0.0
    return Generation(
        output_tokens_per_second=delta("generation_tokens") / seconds,
        prompt_tokens_per_second=delta("prompt_tokens") / seconds,
        ttft_p50=at(ttft, 0.5),
        ttft_p99=ttft_p99,
        tpot_p50=at(tpot, 0.5),
        tpot_p99=tpot_p99,
        preemptions=int(delta("preemptions")),
        running=max(_latency_sum(older, newer) - queued, 0.0) / seconds,
        waiting=queued / seconds,
        kv_cache_usage=stats_number(newer, "kv_cache_usage") or 0.0,
        aborted=int(delta("aborted")),
        ttft_over=_over(ttft, objectives.ttft),
        tpot_over=_over(tpot, objectives.tpot),
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
