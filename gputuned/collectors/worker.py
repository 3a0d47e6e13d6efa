"""The worker collector: the supervised worker's lifecycle and the stats it streams.

It reads what the supervisor already holds (the newest stats message and the process
state), so sampling never waits on the worker. Stats from a user's own server embedding
the agent may carry only some fields: whatever is missing or not a number is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gputuned.samples import Collected, MetricSpec, WorkerTarget

WORKER_UP = MetricSpec("gputuned_worker_up", "gauge", "1 while the supervised worker is running and ready.", ())
WORKER_CRASH_LOOP = MetricSpec("gputuned_worker_crash_loop", "gauge", "1 when restarts stopped after a crash loop.", ())
WORKER_RESTARTS = MetricSpec(
    "gputuned_worker_restarts_total", "counter", "Times the worker exited and was (or was to be) restarted.", ()
)
WORKER_EXIT_CODE = MetricSpec(
    "gputuned_worker_last_exit_code",
    "gauge",
    "Exit code of the worker's last exit (negative: killed by that signal; 255: unknown, an adopted worker).",
    (),
)
WORKER_UPTIME = MetricSpec("gputuned_worker_uptime_seconds", "gauge", "Seconds since the running worker started.", ())
WORKER_INFO = MetricSpec("gputuned_worker_info", "gauge", "The supervised worker; always 1.", ("pid", "model", "device"))
WORKER_PLACEMENT = MetricSpec(
    "gputuned_worker_placement_info", "gauge", "NUMA node and CPUs the worker was placed on; always 1.", ("node", "cpus")
)
KNOB_VALUE = MetricSpec("gputuned_knob_value", "gauge", "Current value of each worker knob.", ("knob",))
REQUESTS = MetricSpec(
    "gputuned_worker_requests_total",
    "counter",
    "Inference requests by outcome: ok, rejected (the client's mistake), refused (queue full, not ready, draining), "
    "failed (the server's fault).",
    ("outcome",),
)
BATCHES = MetricSpec("gputuned_worker_batches_total", "counter", "Batches the worker ran.", ())
LATENCY = MetricSpec("gputuned_worker_latency_seconds", "histogram", "Request latency in the worker (queue + compute).", ())
BATCH_SIZE = MetricSpec("gputuned_worker_batch_size", "histogram", "Items per batch.", ())
QUEUE_DEPTH = MetricSpec("gputuned_worker_queue_depth", "gauge", "Items waiting for a batch.", ())
LANES = MetricSpec("gputuned_worker_lanes", "gauge", "Execution lanes running.", ())
LANE_BUSY = MetricSpec(
    "gputuned_worker_lane_busy_seconds_total", "counter", "Time lanes spent running batches, summed over lanes.", ()
)
POOL_HITS = MetricSpec("gputuned_worker_pool_hits_total", "counter", "Batches assembled in a pooled buffer.", ())
POOL_MISSES = MetricSpec("gputuned_worker_pool_misses_total", "counter", "Batches that needed a fresh buffer.", ())
OOM = MetricSpec("gputuned_worker_oom_events_total", "counter", "Batches that failed for lack of memory.", ())
H2D = MetricSpec("gputuned_worker_h2d_bytes_total", "counter", "Bytes copied from host to device for inputs.", ())
STATS_AGE = MetricSpec("gputuned_worker_stats_age_seconds", "gauge", "Age of the newest stats message from the worker.", ())

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
    STATS_AGE,
)

# stats field -> (spec, label values)
_SCALARS = {
    "completed": (REQUESTS, ("ok",)),
    "failed": (REQUESTS, ("failed",)),
    "rejected": (REQUESTS, ("rejected",)),
    "refused": (REQUESTS, ("refused",)),
    "batches": (BATCHES, ()),
    "queue_depth": (QUEUE_DEPTH, ()),
    "lanes": (LANES, ()),
    "lane_busy_seconds": (LANE_BUSY, ()),
    "pool_hits": (POOL_HITS, ()),
    "pool_misses": (POOL_MISSES, ()),
    "oom": (OOM, ()),
    "h2d_bytes": (H2D, ()),
}
STALE_STATS_SECONDS = 5.0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def histogram_buckets(stats: Any) -> tuple[list[tuple[float, float]], float] | None:
    """The worker's {'bounds', 'cumulative', 'sum'} as Prometheus buckets, or None if malformed."""
    if not isinstance(stats, dict):
        return None
    bounds, cumulative, total = stats.get("bounds"), stats.get("cumulative"), stats.get("sum")
    if not (isinstance(bounds, list) and isinstance(cumulative, list) and len(cumulative) == len(bounds) + 1 and _number(total)):
        return None
    if not all(_number(v) for v in bounds + cumulative):
        return None
    return [*zip(bounds, cumulative), (float("inf"), cumulative[-1])], float(total)  # type: ignore[arg-type]


class WorkerCollector:
    name = "worker"

    def __init__(self, status: Callable[[], Any], clock: Callable[[], float] = time.monotonic) -> None:
        """`status` returns the supervisor's WorkerStatus."""
        self._status = status
        self._clock = clock

    def collect(self, target: WorkerTarget) -> Collected:
        out = Collected()
        status = self._status()
        now = self._clock()
        ready = status.state.value == "ready"
        out.add(WORKER_UP, 1 if ready and status.pid is not None else 0)
        out.add(WORKER_CRASH_LOOP, 1 if status.state.value == "crash_loop" else 0)
        out.add(WORKER_RESTARTS, status.restarts)
        if status.last_exit_code is not None:
            out.add(WORKER_EXIT_CODE, status.last_exit_code)
        if status.pid is not None and status.started_at is not None:
            out.add(WORKER_UPTIME, max(now - status.started_at, 0.0))
        if status.pid is not None and status.hello is not None:
            identity = status.hello.get("worker", {})
            out.add(WORKER_INFO, 1, str(status.pid), str(identity.get("model", "")), str(identity.get("device", "")))
        if status.placement is not None:
            out.add(WORKER_PLACEMENT, 1, str(status.placement.node), status.placement.cpulist())
        for knob, value in sorted(status.knobs.items()):
            out.add(KNOB_VALUE, value, knob)
        if status.stats is not None and status.pid is not None:
            self._collect_stats(status.stats, out)
            age = now - status.stats_at
            out.add(STATS_AGE, max(age, 0.0))
            if ready and age > STALE_STATS_SECONDS:
                out.errors.append(f"no stats from the worker for {age:.0f} s")
        return out

    @staticmethod
    def _collect_stats(stats: dict[str, Any], out: Collected) -> None:
        for field_name, (spec, labels) in _SCALARS.items():
            value = stats.get(field_name)
            if _number(value):
                out.add(spec, float(value), *labels)  # type: ignore[arg-type]
        for field_name, spec in (("latency_seconds", LATENCY), ("batch_size", BATCH_SIZE)):
            histogram = histogram_buckets(stats.get(field_name))
            if histogram is not None:
                out.add_histogram(spec, *histogram)

    def close(self) -> None:
        """Holds nothing that needs releasing."""
