"""Trial turns: workers on one host take turns to run trials, so one worker's trial cannot
move a neighbour's figures unnoticed (pure: no I/O; thread-safe, since each worker's tuning
job runs in a thread of its own).

Workers share the host's CPUs, memory bandwidth, PCIe root complexes and NUMA nodes, so a
change on trial in one can raise or lower another's goodput. Trials therefore take turns:
by default one at a time on the whole host, or one per NUMA node. A turn goes to the worker
that has waited longest among those still asking (a worker stops asking when it has nothing
to try). And a worker does not take a baseline measured while a neighbour ran a trial for
its own: `disturbed` says so, and its guard waits for a clean window, in the queue (`wait`),
so that a neighbour which keeps finding changes to try cannot take every turn.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

STALE_ASK_SECONDS = 5.0  # a worker that has not asked for this long is no longer waiting
HISTORY = 64  # trials remembered per group, for `disturbed`


@dataclass
class _Trial:
    worker: str
    start: float
    end: float | None = None


class TrialTurns:
    """The turns of every group of workers on one host (a group: the host, or a NUMA node)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder: dict[str, str] = {}  # group -> worker running a trial
        self._waiting: dict[str, dict[str, float]] = {}  # group -> worker -> first ask
        self._last_ask: dict[str, float] = {}
        self._trials: dict[str, list[_Trial]] = {}

    def member(self, worker: str, group: str) -> TrialTurn:
        return TrialTurn(self, worker, group)

    def wait(self, worker: str, group: str, now: float) -> None:
        """`worker` wants the next turn but is not ready for it yet (its baseline is not clean)."""
        with self._lock:
            self._ask(worker, group, now)

    def withdraw(self, worker: str, group: str) -> None:
        """`worker` has nothing to try: it no longer waits for a turn."""
        with self._lock:
            self._waiting.get(group, {}).pop(worker, None)

    def _ask(self, worker: str, group: str, now: float) -> dict[str, float]:
        waiting = self._waiting.setdefault(group, {})
        waiting.setdefault(worker, now)
        self._last_ask[worker] = now
        return waiting

    def acquire(self, worker: str, group: str, now: float) -> bool:
        with self._lock:
            if self._holder.get(group) == worker:
                return True
            waiting = self._ask(worker, group, now)
            if group in self._holder:
                return False
            asking = {w: since for w, since in waiting.items() if now - self._last_ask[w] <= STALE_ASK_SECONDS}
            if min(asking, key=lambda w: (asking[w], w)) != worker:
                return False
            del waiting[worker]
            self._holder[group] = worker
            trials = self._trials.setdefault(group, [])
            trials.append(_Trial(worker, now))
            del trials[:-HISTORY]
            return True

    def release(self, worker: str, group: str, now: float) -> None:
        with self._lock:
            if self._holder.get(group) != worker:
                return
            del self._holder[group]
            for trial in reversed(self._trials.get(group, [])):
                if trial.worker == worker and trial.end is None:
                    trial.end = now
                    break

    def disturbed(self, worker: str, group: str, start: float, end: float) -> bool:
        """Whether another worker of the group had a trial running at any time in [start, end]."""
        with self._lock:
            return any(
                trial.worker != worker and trial.start <= end and (trial.end is None or trial.end >= start)
                for trial in self._trials.get(group, [])
            )


@dataclass(frozen=True)
class TrialTurn:
    """One worker's handle on its group's turns (what its guard holds)."""

    turns: TrialTurns
    worker: str
    group: str

    def acquire(self, now: float) -> bool:
        return self.turns.acquire(self.worker, self.group, now)

    def release(self, now: float) -> None:
        self.turns.release(self.worker, self.group, now)

    def wait(self, now: float) -> None:
        self.turns.wait(self.worker, self.group, now)

    def withdraw(self) -> None:
        self.turns.withdraw(self.worker, self.group)

    def disturbed(self, start: float, end: float) -> bool:
        return self.turns.disturbed(self.worker, self.group, start, end)


def alone(worker: str = "worker") -> TrialTurn:
    """The turns of a worker with no neighbours (tests, a single worker): always its turn."""
    return TrialTurns().member(worker, "host")
