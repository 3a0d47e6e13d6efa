"""What the worker measures about itself, reported over the control socket.

Counters are cumulative from the worker's start (a lost stats message loses nothing; the
daemon takes differences), histograms carry cumulative bucket counts in Prometheus form.
A request's counters and its latency are written by the event loop's thread alone, without
a lock (two locked updates were ~0.4 us of a request's ~9 us in the loop); a batch's are
written by the lane threads, several at once, so each takes the lock. A snapshot, read in
the agent's thread, may miss the request the loop is counting at that moment.

Every request ends in one outcome, so the tuner can tell whose fault a failure was:
`completed` (answered), `rejected` (the client's mistake: a malformed body, an unknown
model, a wrong shape or dtype, an oversize request), `refused` (the worker could not take
it now: queue full, not ready, draining) and `failed` (the server's fault: the model raised,
out of memory). Only `failed` counts against a tuning trial.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from typing import Any

# Fine around typical SLOs (10..500 ms) so p99 and the share within the SLO, which the
# tuner judges by, are interpolated inside narrow buckets.
LATENCY_BUCKETS_SECONDS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.06,
    0.075,
    0.09,
    0.1,
    0.125,
    0.15,
    0.175,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
    10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Histogram:
    """Fixed buckets; one writer at a time (WorkerStats says which)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float, times: int = 1) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += times
        self._sum += value * times
        self._count += times

    def snapshot(self) -> dict[str, Any]:
        cumulative, running = [], 0
        for count in self._counts:
            running += count
            cumulative.append(running)
        return {"bounds": list(self.bounds), "cumulative": cumulative, "sum": self._sum, "count": self._count}


class WorkerStats:
    def __init__(self, queue_depth: Callable[[], int], lanes: Callable[[], int]) -> None:
        self._lock = threading.Lock()
        self._queue_depth = queue_depth
        self._lanes = lanes
        self.requests = 0
        self.completed = 0
        self.failed = 0  # the server's fault
        self.rejected = 0  # the client's mistake (4xx)
        self.refused = 0  # could not be taken now: queue full, not ready, draining (503)
        self.oom = 0
        self.batches = 0
        self.pool_hits = 0
        self.pool_misses = 0
        self.h2d_bytes = 0
        self.lane_busy_seconds = 0.0
        self.latency = Histogram(LATENCY_BUCKETS_SECONDS)
        self.batch_size = Histogram(BATCH_SIZE_BUCKETS)

    # --- a request's outcome: in the event loop's thread only ----------------------------

    def request_received(self) -> None:
        self.requests += 1

    def request_rejected(self) -> None:
        """The client's mistake."""
        self.rejected += 1

    def request_refused(self) -> None:
        """Not taken now (queue full, not ready, draining); the client may retry."""
        self.refused += 1

    def request_failed(self) -> None:
        """The server's fault."""
        self.failed += 1

    def request_completed(self, latency_seconds: float) -> None:
        self.completed += 1
        self.latency.observe(latency_seconds)

    # --- a batch's: in the lane threads ------------------------------------------------

    def batch_done(self, size: int, busy_seconds: float, pool_hit: bool, h2d_bytes: int, oom: bool) -> None:
        with self._lock:
            self.batches += 1
            self.batch_size.observe(size)
            self.lane_busy_seconds += busy_seconds
            self.h2d_bytes += h2d_bytes
            if pool_hit:
                self.pool_hits += 1
            else:
                self.pool_misses += 1
            if oom:
                self.oom += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "completed": self.completed,
                "failed": self.failed,
                "rejected": self.rejected,
                "refused": self.refused,
                "oom": self.oom,
                "batches": self.batches,
                "pool_hits": self.pool_hits,
                "pool_misses": self.pool_misses,
                "h2d_bytes": self.h2d_bytes,
                "lane_busy_seconds": self.lane_busy_seconds,
                "queue_depth": self._queue_depth(),
                "lanes": self._lanes(),
                "latency_seconds": self.latency.snapshot(),
                "batch_size": self.batch_size.snapshot(),
            }
