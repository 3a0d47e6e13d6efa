"""The stats reports a worker streamed over the last minutes, for the windows tuning reads.

The worker's counters are cumulative, so a window is the difference between two reports;
this keeps a bounded history of them (timestamps on the shared monotonic clock) and finds
the pair that bounds a window best. Appended by the supervisor's thread, read by the tuning
job, status and the metrics: every access takes the lock, briefly, and never does I/O.
"""

from __future__ import annotations

import collections
import threading

from gputuned.control.messages import StatsReport

STATS_HISTORY = 600  # reports kept (5 minutes at the worker's 0.5 s)

Report = tuple[float, StatsReport]


class StatsHistory:
    def __init__(self, capacity: int = STATS_HISTORY) -> None:
        self._lock = threading.Lock()
        self._reports: collections.deque[Report] = collections.deque(maxlen=capacity)

    def append(self, t: float, stats: StatsReport) -> None:
        with self._lock:
            if self._reports and t <= self._reports[-1][0]:
                return  # out of order (a report replayed after a reconnect): the older one stands
            self._reports.append((t, stats))

    def clear(self) -> None:
        """A new worker process: its counters start again from zero."""
        with self._lock:
            self._reports.clear()

    def latest(self) -> Report | None:
        with self._lock:
            return self._reports[-1] if self._reports else None

    def between(self, start: float, end: float) -> tuple[Report, Report] | None:
        """The reports that bound [start, end] best: the last at or before each time (the
        first report when none is that old); None when they do not span any time."""
        with self._lock:
            reports = list(self._reports)
        older = [entry for entry in reports if entry[0] <= start] or reports[:1]
        newer = [entry for entry in reports if entry[0] <= end]
        if not older or not newer or newer[-1][0] <= older[-1][0]:
            return None
        return older[-1], newer[-1]
