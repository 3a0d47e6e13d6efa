"""A cumulative histogram with fixed buckets, and the buckets the workers report in.

Every producer of worker stats (the built-in worker, the Triton adapter) counts its
latencies and batch sizes with this one class, so every report carries the same buckets;
`messages.HistogramReport` is the shape of its snapshot. Compiled with the serving path
(setup.py): the worker observes every request's latency here.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from gputuned.control.messages import HistogramReport

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
    """Fixed buckets; one writer at a time (its owner says which)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float, times: int = 1) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += times
        self._sum += value * times
        self._count += times

    def snapshot(self) -> HistogramReport:
        cumulative, running = [], 0
        for count in self._counts:
            running += count
            cumulative.append(running)
        return {"bounds": list(self.bounds), "cumulative": cumulative, "sum": self._sum, "count": self._count}
