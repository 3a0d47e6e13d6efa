"""Energy per worker: each GPU's energy counter split, tick by tick, among what used it (pure).

NVML counts a board's energy, not a process's. Over each tick, the energy the counter grew
is split by these rules, and every joule lands somewhere, so the workers' counters and the
unattributed ones add up to the GPU's:

- MIG on: one counter serves every GPU instance and NVML keeps no per-process utilisation
  under MIG, so nothing is split: the energy stays unattributed, reason `mig`.
- No compute process on the GPU: unattributed, reason `idle`.
- Processes ran kernels (NVML's per-process SM utilisation samples of the tick): each gets
  its share of their summed utilisation; what goes to processes that are not gputuned's
  workers stays unattributed, reason `other_processes`.
- Processes hold the GPU but no sample says who ran (none ran a kernel in the tick, or the
  driver keeps no per-process samples): an even split among them, since a loaded model
  holds the board's idle draw as much as any.

A counter that goes backwards (the driver was reloaded) starts a new baseline; the tick in
between is not attributed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

IDLE, OTHER_PROCESSES, MIG = "idle", "other_processes", "mig"
UNATTRIBUTED_REASONS = (IDLE, OTHER_PROCESSES, MIG)


@dataclass(frozen=True)
class Split:
    """Shares of one tick's energy (summing to 1): by worker name, and unattributed by reason."""

    workers: Mapping[str, float] = field(default_factory=dict)
    unattributed: Mapping[str, float] = field(default_factory=dict)


def split(resident: Collection[int], utilization: Mapping[int, float] | None, owners: Mapping[int, str], mig: bool) -> Split:
    """How one tick's energy of a GPU divides: `resident` are the compute processes on it,
    `utilization` their SM utilisation samples of the tick by pid (None: the driver gives
    none), `owners` the worker owning each pid of gputuned's."""
    if mig:
        return Split(unattributed={MIG: 1.0})
    if not resident:
        return Split(unattributed={IDLE: 1.0})
    busy = {pid: share for pid, share in (utilization or {}).items() if share > 0}
    weights = busy if busy else dict.fromkeys(resident, 1.0)
    total = sum(weights.values())
    workers: dict[str, float] = {}
    other = 0.0
    for pid, weight in weights.items():
        owner = owners.get(pid)
        if owner is None:
            other += weight / total
        else:
            workers[owner] = workers.get(owner, 0.0) + weight / total
    return Split(workers, {OTHER_PROCESSES: other} if other else {})


class EnergyLedger:
    """Joules attributed since gputuned started: per (worker, GPU) and per (GPU, reason)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}  # GPU -> its energy counter at the previous tick
        self.workers: dict[tuple[str, str], float] = {}
        self.unattributed: dict[tuple[str, str], float] = {}

    def record(self, gpu: str, joules: float, shares: Split) -> None:
        """The GPU's energy counter now, and how its growth since the last tick divides."""
        last, self._last[gpu] = self._last.get(gpu), joules
        for reason in UNATTRIBUTED_REASONS:
            self.unattributed.setdefault((gpu, reason), 0.0)
        for worker in shares.workers:
            self.workers.setdefault((worker, gpu), 0.0)
        if last is None or joules < last:
            return
        grown = joules - last
        for worker, share in shares.workers.items():
            self.workers[(worker, gpu)] += grown * share
        for reason, share in shares.unattributed.items():
            self.unattributed[(gpu, reason)] += grown * share
