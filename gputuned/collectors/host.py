"""The host collector: per-core CPU busy ratio, memory, and the worker process's CPU,
memory and threads, through psutil.

psutil reads the live /proc (its PROCFS_PATH is process-wide state we do not redirect),
so this collector takes the psutil module instead of a root; tests use the real host.
Busy ratios come from our own deltas of cpu_times() rather than psutil.cpu_percent(),
whose baseline is hidden module state shared with any other caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

from gputuned.samples import Collected, MetricSpec, WorkerTarget

CPU_BUSY = MetricSpec(
    "gputuned_host_cpu_busy_ratio", "gauge", "Share of the last tick each CPU spent outside idle and iowait.", ("cpu",)
)
MEMORY_TOTAL = MetricSpec("gputuned_host_memory_total_bytes", "gauge", "Physical memory.", ())
MEMORY_AVAILABLE = MetricSpec(
    "gputuned_host_memory_available_bytes", "gauge", "Memory available to new work without swapping.", ()
)
MEMORY_USED = MetricSpec("gputuned_host_memory_used_bytes", "gauge", "Memory in use (total minus free, buffers and cache).", ())
WORKER_CPU = MetricSpec("gputuned_worker_cpu_seconds_total", "counter", "CPU time of the worker process.", ("worker", "mode"))
WORKER_RSS = MetricSpec("gputuned_worker_resident_memory_bytes", "gauge", "Resident memory of the worker process.", ("worker",))
WORKER_THREADS = MetricSpec("gputuned_worker_threads", "gauge", "Threads of the worker process.", ("worker",))

SPECS = (CPU_BUSY, MEMORY_TOTAL, MEMORY_AVAILABLE, MEMORY_USED, WORKER_CPU, WORKER_RSS, WORKER_THREADS)


def busy_ratio(before: Any, after: Any) -> float | None:
    """Share of the interval between two psutil cpu_times() readings spent busy."""
    total = sum(after) - sum(before)
    if total <= 0:
        return None
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0))
    return min(max(1.0 - idle / total, 0.0), 1.0)


class HostCollector:
    name = "host"

    def __init__(self, psutil: ModuleType) -> None:
        self._psutil = psutil
        self._previous_times: list[Any] | None = None
        self._processes: dict[str, Any] = {}  # worker -> psutil.Process, kept so pid reuse is detected

    def collect(self, targets: Sequence[WorkerTarget]) -> Collected:
        out = Collected()
        times = self._psutil.cpu_times(percpu=True)
        if self._previous_times is not None and len(self._previous_times) == len(times):
            for cpu, (before, after) in enumerate(zip(self._previous_times, times)):
                ratio = busy_ratio(before, after)
                if ratio is not None:
                    out.add(CPU_BUSY, ratio, str(cpu))
        self._previous_times = times

        memory = self._psutil.virtual_memory()
        out.add(MEMORY_TOTAL, memory.total)
        out.add(MEMORY_AVAILABLE, memory.available)
        out.add(MEMORY_USED, memory.used)

        for target in targets:
            if target.pid is not None:
                self._collect_worker(target.name, target.pid, out)
        return out

    def _collect_worker(self, name: str, pid: int, out: Collected) -> None:
        psutil = self._psutil
        process = self._processes.get(name)
        try:
            if process is None or process.pid != pid or not process.is_running():
                process = self._processes[name] = psutil.Process(pid)
            with process.oneshot():
                cpu = process.cpu_times()
                rss = process.memory_info().rss
                threads = process.num_threads()
        except psutil.NoSuchProcess:
            self._processes.pop(name, None)
            out.notes.append(f"worker pid {pid} is gone")
            return
        except psutil.AccessDenied as exc:
            out.errors.append(f"worker pid {pid}: access denied ({exc})")
            return
        out.add(WORKER_CPU, cpu.user, name, "user")
        out.add(WORKER_CPU, cpu.system, name, "system")
        out.add(WORKER_RSS, rss, name)
        out.add(WORKER_THREADS, threads, name)

    def close(self) -> None:
        """Holds nothing that needs releasing."""
