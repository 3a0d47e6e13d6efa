"""The worker collector: the supervised worker's lifecycle and the stats it streams.

It reads what the supervisors already hold (the newest stats message and the process
state), so sampling never waits on the worker. Stats from a user's own server embedding
the agent may carry only some fields: what is missing, or was malformed on arrival (`messages.read_stats`), is skipped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from gputuned.control.messages import HistogramField, HistogramReport, StatsReport, stats_number
from gputuned.performance import GenerativeObjectives, met_generative, within_objective
from gputuned.samples import Collected, MetricSpec, WorkerTarget

WORKER = ("worker",)

WORKER_UP = MetricSpec("gputuned_worker_up", "gauge", "1 while the supervised worker is running and ready.", WORKER)
WORKER_CRASH_LOOP = MetricSpec("gputuned_worker_crash_loop", "gauge", "1 when restarts stopped after a crash loop.", WORKER)
WORKER_RESTARTS = MetricSpec(
    "gputuned_worker_restarts_total", "counter", "Times the worker exited and was (or was to be) restarted.", WORKER
)
WORKER_EXIT_CODE = MetricSpec(
    "gputuned_worker_last_exit_code",
    "gauge",
    "Exit code of the worker's last exit (negative: killed by that signal; 255: unknown, an adopted worker).",
    WORKER,
)
WORKER_UPTIME = MetricSpec("gputuned_worker_uptime_seconds", "gauge", "Seconds since the running worker started.", WORKER)
WORKER_INFO = MetricSpec(
    "gputuned_worker_info",
    "gauge",
    "A supervised worker, its kind (builtin, agent, triton) and its GPU (empty on the CPU); always 1.",
    ("worker", "pid", "model", "device", "gpu", "kind"),
)
WORKER_PLACEMENT = MetricSpec(
    "gputuned_worker_placement_info",
    "gauge",
    "NUMA node and CPUs the worker was placed on; always 1.",
    ("worker", "node", "cpus"),
)
KNOB_VALUE = MetricSpec("gputuned_knob_value", "gauge", "Current value of each worker knob.", ("worker", "knob"))
REQUESTS = MetricSpec(
    "gputuned_worker_requests_total",
    "counter",
    "Inference requests by outcome: ok, rejected (the client's mistake), refused (queue full, not ready, draining), "
    "failed (the server's fault), aborted (an LLM request the client cancelled or left).",
    ("worker", "outcome"),
)
SLO_MET = MetricSpec(
    "gputuned_worker_slo_met_requests_total",
    "counter",
    "Requests answered within the worker's latency objective (its p99 SLO), from its latency histogram, interpolated "
    "inside the bucket the objective falls in; for an LLM worker, requests within both its TTFT and TPOT objectives "
    "(a bound that never counts more, see docs). It starts again with the worker, and moves when an objective is changed.",
    WORKER,
)
BATCHES = MetricSpec("gputuned_worker_batches_total", "counter", "Batches the worker ran.", WORKER)
LATENCY = MetricSpec("gputuned_worker_latency_seconds", "histogram", "Request latency in the worker (queue + compute).", WORKER)
BATCH_SIZE = MetricSpec("gputuned_worker_batch_size", "histogram", "Items per batch.", WORKER)
QUEUE_DEPTH = MetricSpec("gputuned_worker_queue_depth", "gauge", "Items waiting for a batch.", WORKER)
LANES = MetricSpec("gputuned_worker_lanes", "gauge", "Execution lanes running.", WORKER)
LANE_BUSY = MetricSpec(
    "gputuned_worker_lane_busy_seconds_total", "counter", "Time lanes spent running batches, summed over lanes.", WORKER
)
POOL_HITS = MetricSpec("gputuned_worker_pool_hits_total", "counter", "Batches assembled in a pooled buffer.", WORKER)
POOL_MISSES = MetricSpec("gputuned_worker_pool_misses_total", "counter", "Batches that needed a fresh buffer.", WORKER)
OOM = MetricSpec("gputuned_worker_oom_events_total", "counter", "Batches that failed for lack of memory.", WORKER)
H2D = MetricSpec("gputuned_worker_h2d_bytes_total", "counter", "Bytes copied from host to device for inputs.", WORKER)
PROMPT_TOKENS = MetricSpec("gputuned_worker_prompt_tokens_total", "counter", "Prompt tokens an LLM worker processed.", WORKER)
GENERATION_TOKENS = MetricSpec("gputuned_worker_generation_tokens_total", "counter", "Tokens an LLM worker generated.", WORKER)
PREEMPTIONS = MetricSpec(
    "gputuned_worker_preemptions_total",
    "counter",
    "Sequences an LLM worker preempted: its KV cache ran out, and their tokens are computed again later.",
    WORKER,
)
RUNNING = MetricSpec("gputuned_worker_running_sequences", "gauge", "Sequences an LLM worker is generating now.", WORKER)
KV_CACHE = MetricSpec("gputuned_worker_kv_cache_usage_ratio", "gauge", "Share of an LLM worker's KV cache in use, 0-1.", WORKER)
TTFT = MetricSpec(
    "gputuned_worker_time_to_first_token_seconds", "histogram", "An LLM worker's time to first token, per request.", WORKER
)
TPOT = MetricSpec(
    "gputuned_worker_time_per_output_token_seconds",
    "histogram",
    "An LLM worker's time per output token after the first, per request.",
    WORKER,
)
ITL = MetricSpec("gputuned_worker_inter_token_latency_seconds", "histogram", "An LLM worker's time between two tokens.", WORKER)
QUEUE_TIME = MetricSpec(
    "gputuned_worker_queue_time_seconds", "histogram", "Time an LLM worker's requests waited before their first step.", WORKER
)
TOKENS = MetricSpec(
    "gputuned_worker_tokens_total", "counter", "Tokens of a variable-length model's requests the worker computed.", WORKER
)
PADDING_TOKENS = MetricSpec(
    "gputuned_worker_padding_tokens_total",
    "counter",
    "Padding tokens computed with them (a batch is padded to its longest request); padding share: padding / (tokens + padding).",
    WORKER,
)
STATS_AGE = MetricSpec("gputuned_worker_stats_age_seconds", "gauge", "Age of the newest stats message from the worker.", WORKER)

# The families only an LLM (generative) worker reports.
GENERATIVE_SPECS = (PROMPT_TOKENS, GENERATION_TOKENS, PREEMPTIONS, RUNNING, KV_CACHE, TTFT, TPOT, ITL, QUEUE_TIME)
# The families only a built-in worker serving a variable-length model reports.
TOKEN_SPECS = (TOKENS, PADDING_TOKENS)

SPECS = (
    WORKER_UP,
    WORKER_CRASH_LOOP,
    WORKER_RESTARTS,
    WORKER_EXIT_CODE,
    WORKER_UPTIME,
    WORKER_INFO,
    WORKER_PLACEMENT,
    KNOB_VALUE,
    REQUESTS,
    SLO_MET,
    BATCHES,
    LATENCY,
    BATCH_SIZE,
    QUEUE_DEPTH,
    LANES,
    LANE_BUSY,
    POOL_HITS,
    POOL_MISSES,
    OOM,
    H2D,
    PROMPT_TOKENS,
    GENERATION_TOKENS,
    PREEMPTIONS,
    RUNNING,
    KV_CACHE,
    TTFT,
    TPOT,
    ITL,
    QUEUE_TIME,
    TOKENS,
    PADDING_TOKENS,
    STATS_AGE,
)

# stats field (messages.STATS_NUMBERS) -> (spec, label values)
_SCALARS: Mapping[str, tuple[MetricSpec, tuple[str, ...]]] = {
    "completed": (REQUESTS, ("ok",)),
    "failed": (REQUESTS, ("failed",)),
    "rejected": (REQUESTS, ("rejected",)),
    "refused": (REQUESTS, ("refused",)),
    "aborted": (REQUESTS, ("aborted",)),
    "batches": (BATCHES, ()),
    "queue_depth": (QUEUE_DEPTH, ()),
    "lanes": (LANES, ()),
    "lane_busy_seconds": (LANE_BUSY, ()),
    "pool_hits": (POOL_HITS, ()),
    "pool_misses": (POOL_MISSES, ()),
    "oom": (OOM, ()),
    "h2d_bytes": (H2D, ()),
    "prompt_tokens": (PROMPT_TOKENS, ()),
    "generation_tokens": (GENERATION_TOKENS, ()),
    "preemptions": (PREEMPTIONS, ()),
    "running": (RUNNING, ()),
    "kv_cache_usage": (KV_CACHE, ()),
    "tokens": (TOKENS, ()),
    "padding_tokens": (PADDING_TOKENS, ()),
}
_HISTOGRAMS: Mapping[HistogramField, MetricSpec] = {
    "latency_seconds": LATENCY,
    "batch_size": BATCH_SIZE,
    "ttft_seconds": TTFT,
    "tpot_seconds": TPOT,
    "itl_seconds": ITL,
    "queue_seconds": QUEUE_TIME,
}
STALE_STATS_SECONDS = 5.0


def histogram_buckets(histogram: HistogramReport) -> tuple[list[tuple[float, float]], float]:
    """A worker's histogram (checked on arrival) as Prometheus buckets and their sum."""
    cumulative = histogram["cumulative"]
    return [*zip(histogram["bounds"], map(float, cumulative)), (math.inf, float(cumulative[-1]))], histogram["sum"]


class SupervisedWorker(Protocol):
    """What the collector reads of a supervised worker (a daemon slot)."""

    @property
    def name(self) -> str: ...

    @property
    def gpu(self) -> int | None:
        """The NVML index of its GPU; None on the CPU."""
        ...

    def status(self) -> Any:
        """The supervisor's WorkerStatus: a snapshot, never a wait on the worker."""
        ...

    def slo_seconds(self) -> float:
        """The latency objective the worker is held to."""
        ...

    def generative_objectives(self) -> GenerativeObjectives:
        """Its TTFT and TPOT objectives, should it be an LLM worker."""
        ...


class WorkerCollector:
    """The supervised workers' lifecycle and the stats they stream, each labelled `worker`."""

    name = "worker"

    def __init__(self, workers: Callable[[], Sequence[SupervisedWorker]], clock: Callable[[], float] = time.monotonic) -> None:
        self._workers = workers
        self._clock = clock

    def collect(self, targets: Sequence[WorkerTarget]) -> Collected:  # noqa: ARG002 - the Collector protocol; reads the slots
        out = Collected()
        now = self._clock()
        for worker in self._workers():
            status = worker.status()
            self._collect_worker(worker.name, worker.gpu, status, now, out)
            if status.stats is not None and status.pid is not None:
                self._collect_slo(worker.name, status.stats, worker.slo_seconds(), worker.generative_objectives(), out)
        return out

    def _collect_worker(self, name: str, gpu: int | None, status: Any, now: float, out: Collected) -> None:
        ready = status.state.value == "ready"
        out.add(WORKER_UP, 1 if ready and status.pid is not None else 0, name)
        out.add(WORKER_CRASH_LOOP, 1 if status.state.value == "crash_loop" else 0, name)
        out.add(WORKER_RESTARTS, status.restarts, name)
        if status.last_exit_code is not None:
            out.add(WORKER_EXIT_CODE, status.last_exit_code, name)
        if status.pid is not None and status.started_at is not None:
            out.add(WORKER_UPTIME, max(now - status.started_at, 0.0), name)
        if status.pid is not None and status.hello is not None:
            identity = status.hello.get("worker", {})
            model, device = str(identity.get("model", "")), str(identity.get("device", ""))
            kind = str(identity.get("kind", "agent"))
            out.add(WORKER_INFO, 1, name, str(status.pid), model, device, "" if gpu is None else str(gpu), kind)
        if status.placement is not None:
            out.add(WORKER_PLACEMENT, 1, name, str(status.placement.node), status.placement.cpulist())
        for knob, value in sorted(status.knobs.items()):
            out.add(KNOB_VALUE, value, name, knob)
        if status.stats is not None and status.pid is not None:
            self._collect_stats(name, status.stats, out)
            age = now - status.stats_at
            out.add(STATS_AGE, max(age, 0.0), name)
            if ready and age > STALE_STATS_SECONDS:
                # Worded without the age (exported as STATS_AGE): the sampler logs an error once
                # when it appears and once when it is gone, not every tick it grows.
                out.errors.append(f"no stats from worker {name} for over {STALE_STATS_SECONDS:.0f} s")

    @staticmethod
    def _collect_slo(name: str, stats: StatsReport, slo_seconds: float, generative: GenerativeObjectives, out: Collected) -> None:
        ttft, tpot, latency = stats.get("ttft_seconds"), stats.get("tpot_seconds"), stats.get("latency_seconds")
        if ttft is not None and tpot is not None:
            out.add(SLO_MET, met_generative(ttft, tpot, generative), name)
        elif latency is not None:
            out.add(SLO_MET, within_objective(latency, slo_seconds), name)

    @staticmethod
    def _collect_stats(name: str, stats: StatsReport, out: Collected) -> None:
        for field_name, (spec, labels) in _SCALARS.items():
            value = stats_number(stats, field_name)
            if value is not None:
                out.add(spec, value, name, *labels)
        for field_name, spec in _HISTOGRAMS.items():
            histogram = stats.get(field_name)
            if histogram is not None:
                out.add_histogram(spec, *histogram_buckets(histogram), name)

    def close(self) -> None:
        """Holds nothing that needs releasing."""
