"""SampleStore: the newest snapshot of every collector, and a bounded history per series.

The sampler thread publishes, the scrape thread reads snapshots and (later) the tuning
job reads windows. Snapshots are replaced whole under a lock, never mutated, so readers
get a consistent view without holding the lock while they work.
"""

from __future__ import annotations

import threading
from array import array
from dataclasses import dataclass

from gputuned.samples import HistogramSample, Sample


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One collector's output from its most recent tick."""

    collector: str
    samples: tuple[Sample | HistogramSample, ...]
    success: bool
    duration_seconds: float
    taken_at: float  # monotonic seconds (the clock worker stats and tuning windows use too)


class Ring:
    """Fixed-capacity ring of (time, value) pairs in two flat double arrays.

    Flat arrays cost 16 bytes a point, against about 100 for a deque of tuples: a window
    of 300 points for every series of an 8-GPU host stays within a few MB.
    """

    __slots__ = ("_count", "_next", "_times", "_values")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("ring capacity must be at least 1")
        self._times = array("d", bytes(8 * capacity))
        self._values = array("d", bytes(8 * capacity))
        self._next = 0
        self._count = 0

    def append(self, t: float, value: float) -> None:
        self._times[self._next] = t
        self._values[self._next] = value
        self._next = (self._next + 1) % len(self._times)
        self._count = min(self._count + 1, len(self._times))

    def points(self) -> list[tuple[float, float]]:
        """Oldest first."""
        capacity = len(self._times)
        start = (self._next - self._count) % capacity
        return [(self._times[(start + i) % capacity], self._values[(start + i) % capacity]) for i in range(self._count)]


SeriesKey = tuple[str, tuple[str, ...]]


class SampleStore:
    """Newest snapshot per collector plus a ring of the last `window` points per series."""

    def __init__(self, window: int) -> None:
        self._window = window
        self._lock = threading.Lock()
        self._snapshots: dict[str, Snapshot] = {}
        self._rings: dict[SeriesKey, Ring] = {}
        self._last_round_at: float | None = None
        self._skipped_rounds = 0
        self._job_errors: dict[str, int] = {}

    def publish(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._snapshots[snapshot.collector] = snapshot
            for sample in snapshot.samples:
                if not isinstance(sample, Sample):
                    continue  # histograms are served, not windowed: tuners read the raw stats
                key = (sample.spec.name, sample.labels)
                ring = self._rings.get(key)
                if ring is None:
                    ring = self._rings[key] = Ring(self._window)
                ring.append(snapshot.taken_at, sample.value)

    def finish_round(self, at: float) -> None:
        """Marks a complete sampling round, the moment `gputuned_sample_age_seconds` counts from."""
        with self._lock:
            self._last_round_at = at

    def count_skipped_round(self) -> None:
        """A round was skipped because the previous one was still running."""
        with self._lock:
            self._skipped_rounds += 1

    def skipped_rounds(self) -> int:
        with self._lock:
            return self._skipped_rounds

    def register_job(self, job: str) -> None:
        """A scheduler job whose failures are counted (its counter starts at 0)."""
        with self._lock:
            self._job_errors.setdefault(job, 0)

    def count_job_error(self, job: str) -> None:
        with self._lock:
            self._job_errors[job] = self._job_errors.get(job, 0) + 1

    def job_errors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._job_errors)

    def snapshots(self) -> list[Snapshot]:
        with self._lock:
            return list(self._snapshots.values())

    def last_round_at(self) -> float | None:
        with self._lock:
            return self._last_round_at

    def window(self, name: str, labels: tuple[str, ...] = ()) -> list[tuple[float, float]]:
        """The recorded (time, value) points of one series, oldest first; empty if unknown."""
        with self._lock:
            ring = self._rings.get((name, labels))
            return ring.points() if ring is not None else []

    def mean(self, name: str, labels: tuple[str, ...] | None, start: float, end: float) -> float | None:
        """Mean of a series' points within [start, end]; `labels` None averages every series of
        that name; None when there is no point."""
        with self._lock:
            rings = [
                ring
                for (ring_name, ring_labels), ring in self._rings.items()
                if ring_name == name and (labels is None or ring_labels == labels)
            ]
            points = [value for ring in rings for t, value in ring.points() if start <= t <= end]
        return sum(points) / len(points) if points else None

    def rate(self, name: str, labels: tuple[str, ...], start: float, end: float) -> float | None:
        """A counter's growth per second between its first and last points within [start,
        end]; None with fewer than two points or after a reset (the counter fell)."""
        points = [(t, value) for t, value in self.window(name, labels) if start <= t <= end]
        if len(points) < 2 or points[-1][0] <= points[0][0] or points[-1][1] < points[0][1]:
            return None
        (t0, v0), (t1, v1) = points[0], points[-1]
        return (v1 - v0) / (t1 - t0)
