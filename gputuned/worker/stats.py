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

import threading
from collections.abc import Callable

from gputuned.control.histogram import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_SECONDS, Histogram
from gputuned.control.messages import StatsReport


class WorkerStats:
    def __init__(self, queue_depth: Callable[[], int], lanes: Callable[[], int], variable: bool = False) -> None:
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
        self._variable = variable
        self.tokens = 0  # a variable-length model's: its requests' own tokens computed
        self.padding_tokens = 0  # and the padding computed with them

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

    def batch_done(
        self, size: int, busy_seconds: float, pool_hit: bool, h2d_bytes: int, oom: bool, tokens: int, padding_tokens: int
    ) -> None:
        with self._lock:
            self.tokens += tokens
            self.padding_tokens += padding_tokens
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

    def snapshot(self) -> StatsReport:
        with self._lock:
            report: StatsReport = {
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
            if self._variable:
                report["tokens"], report["padding_tokens"] = self.tokens, self.padding_tokens
            return report
