"""The nvml collector: per-GPU identity, utilisation, memory, power, clocks, throttling,
ECC and XID errors, and each supervised worker's own share of each GPU: its memory, its
utilisation and the energy attributed to it (collectors/energy.py says how it is split).

A worker owns the GPU processes of its process tree (vLLM's engine core and Triton's
backend stubs are children of the process gputuned supervises).

Every reading goes through NvmlSession.read, so an unsupported field is skipped (and
noted once), a lost GPU drops only that GPU from the tick, and a vanished library turns
the whole collector's success to 0 until NVML answers again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gputuned.collectors.energy import EnergyLedger, Split, split
from gputuned.collectors.nvml_session import (
    FieldUnsupported,
    GpuDevice,
    GpuLost,
    NoData,
    NoEvent,
    NvmlProblem,
    NvmlSession,
    NvmlUnavailable,
    collect_per_gpu,
)
from gputuned.procfs import ParseError, parse_status_field, read_text
from gputuned.samples import Collected, MetricSpec, WorkerTarget

GPU = ("gpu",)

GPU_INFO = MetricSpec(
    "gputuned_gpu_info",
    "gauge",
    "GPU identity; always 1.",
    ("gpu", "uuid", "name", "pci_bus_id", "driver_version", "numa_node"),
)
UTILIZATION = MetricSpec(
    "gputuned_gpu_utilization_ratio", "gauge", "Share of the last sample period in which a kernel ran on the GPU.", GPU
)
MEMORY_UTILIZATION = MetricSpec(
    "gputuned_gpu_memory_utilization_ratio",
    "gauge",
    "Share of the last sample period in which device memory was read or written.",
    GPU,
)
MEMORY_USED = MetricSpec("gputuned_gpu_memory_used_bytes", "gauge", "Device memory allocated by processes.", GPU)
MEMORY_TOTAL = MetricSpec("gputuned_gpu_memory_total_bytes", "gauge", "Installed device memory.", GPU)
MEMORY_RESERVED = MetricSpec(
    "gputuned_gpu_memory_reserved_bytes", "gauge", "Device memory reserved by the driver and firmware.", GPU
)
MEMORY_FREE = MetricSpec("gputuned_gpu_memory_free_bytes", "gauge", "Device memory neither used nor reserved.", GPU)
POWER = MetricSpec("gputuned_gpu_power_watts", "gauge", "Board power draw.", GPU)
ENERGY = MetricSpec("gputuned_gpu_energy_joules_total", "counter", "Energy consumed since the driver was loaded.", GPU)
TEMPERATURE = MetricSpec("gputuned_gpu_temperature_celsius", "gauge", "GPU core temperature.", GPU)
SM_CLOCK = MetricSpec("gputuned_gpu_sm_clock_hertz", "gauge", "Current SM clock.", GPU)
MEMORY_CLOCK = MetricSpec("gputuned_gpu_memory_clock_hertz", "gauge", "Current memory clock.", GPU)
CLOCK_EVENT = MetricSpec(
    "gputuned_gpu_clock_event_active",
    "gauge",
    "1 while this reason holds the clocks below their maximum (NVML clock event / throttle reasons).",
    ("gpu", "reason"),
)
ECC_ERRORS = MetricSpec(
    "gputuned_gpu_ecc_errors_total", "counter", "Volatile ECC errors since the driver was loaded, by type.", ("gpu", "type")
)
XID_ERRORS = MetricSpec(
    "gputuned_gpu_xid_errors_total", "counter", "Critical XID errors seen since gputuned started, by XID code.", ("gpu", "xid")
)
WORKER_GPU = ("worker", "gpu")
WORKER_GPU_MEMORY = MetricSpec(
    "gputuned_worker_gpu_memory_used_bytes", "gauge", "Device memory used by the worker process.", WORKER_GPU
)
WORKER_GPU_UTILIZATION = MetricSpec(
    "gputuned_worker_gpu_utilization_ratio",
    "gauge",
    "Share of time the worker process had a kernel running on the GPU.",
    WORKER_GPU,
)
WORKER_GPU_MEMORY_UTILIZATION = MetricSpec(
    "gputuned_worker_gpu_memory_utilization_ratio",
    "gauge",
    "Share of time the worker process read or wrote device memory.",
    WORKER_GPU,
)
WORKER_ENERGY = MetricSpec(
    "gputuned_worker_energy_joules_total",
    "counter",
    "GPU energy attributed to the worker since gputuned started: its share of each tick's growth of the GPU's "
    "energy counter, by its processes' share of the GPU's utilisation.",
    WORKER_GPU,
)
UNATTRIBUTED_ENERGY = MetricSpec(
    "gputuned_gpu_unattributed_energy_joules_total",
    "counter",
    "GPU energy since gputuned started that no worker is charged with, by reason: idle (no process on the GPU), "
    "other_processes (processes that are not gputuned's workers), mig (one counter for every GPU instance).",
    ("gpu", "reason"),
)

SPECS = (
    GPU_INFO,
    UTILIZATION,
    MEMORY_UTILIZATION,
    MEMORY_USED,
    MEMORY_TOTAL,
    MEMORY_RESERVED,
    MEMORY_FREE,
    POWER,
    ENERGY,
    TEMPERATURE,
    SM_CLOCK,
    MEMORY_CLOCK,
    CLOCK_EVENT,
    ECC_ERRORS,
    XID_ERRORS,
    WORKER_GPU_MEMORY,
    WORKER_GPU_UTILIZATION,
    WORKER_GPU_MEMORY_UTILIZATION,
    WORKER_ENERGY,
    UNATTRIBUTED_ENERGY,
)

# NVML's clock event reason bits (nvmlClocksEventReason*), named as in the NVML docs.
CLOCK_EVENT_REASONS = (
    ("gpu_idle", "nvmlClocksEventReasonGpuIdle"),
    ("applications_clocks_setting", "nvmlClocksEventReasonApplicationsClocksSetting"),
    ("sw_power_cap", "nvmlClocksEventReasonSwPowerCap"),
    ("hw_slowdown", "nvmlClocksEventReasonHwSlowdown"),
    ("sync_boost", "nvmlClocksEventReasonSyncBoost"),
    ("sw_thermal_slowdown", "nvmlClocksEventReasonSwThermalSlowdown"),
    ("hw_thermal_slowdown", "nvmlClocksEventReasonHwThermalSlowdown"),
    ("hw_power_brake_slowdown", "nvmlClocksEventReasonHwPowerBrakeSlowdown"),
    ("display_clock_setting", "nvmlClocksEventReasonDisplayClockSetting"),
)

# Bound on events drained per GPU per tick, so an event storm cannot stall sampling.
MAX_EVENTS_PER_TICK = 64
# How far up a GPU process's ancestry its worker is looked for.
MAX_ANCESTRY = 8


@dataclass(frozen=True)
class OnGpu:
    """The compute processes on a GPU in one tick: their pids, the worker owning each of
    gputuned's, and their SM utilisation of the tick (None: the driver keeps no samples)."""

    resident: set[int]
    owners: dict[int, str]
    utilization: dict[int, float] | None


class NvmlCollector:
    name = "nvml"

    def __init__(self, session: NvmlSession, nvml: Any, proc_root: Path) -> None:
        self._session = session
        self._nvml = nvml
        self._proc_root = proc_root
        self._energy = EnergyLedger()
        self._event_sets: dict[str, Any] = {}  # uuid -> NVML event set (None if unsupported)
        self._event_generation = 0  # the session generation the event sets belong to
        self._xid_counts: dict[tuple[str, str], int] = {}  # (gpu, xid) -> count
        self._process_sample_ts: dict[int, int] = {}  # gpu -> last NVML process sample timestamp

    def collect(self, targets: Sequence[WorkerTarget]) -> Collected:
        workers = [target for target in targets if target.pid is not None]
        return collect_per_gpu(self._session, lambda device, out: self._collect_device(device, workers, out))

    def _optional(self, out: Collected, device: GpuDevice, function: str, *args: Any) -> Any:
        return self._session.read_or_note(out.notes, device, function, *args)

    def _collect_device(self, device: GpuDevice, workers: list[WorkerTarget], out: Collected) -> None:
        nvml = self._nvml
        gpu = str(device.index)
        out.add(
            GPU_INFO, 1, gpu, device.uuid, device.name, device.pci_bus_id, self._session.driver_version, str(device.numa_node)
        )

        rates = self._optional(out, device, "nvmlDeviceGetUtilizationRates")
        if rates is not None:
            out.add(UTILIZATION, rates.gpu / 100.0, gpu)
            out.add(MEMORY_UTILIZATION, rates.memory / 100.0, gpu)

        memory = self._optional(out, device, "nvmlDeviceGetMemoryInfo", nvml.nvmlMemory_v2)
        if memory is None:
            memory = self._optional(out, device, "nvmlDeviceGetMemoryInfo")
        if memory is not None:
            out.add(MEMORY_USED, memory.used, gpu)
            out.add(MEMORY_TOTAL, memory.total, gpu)
            out.add(MEMORY_FREE, memory.free, gpu)
            if hasattr(memory, "reserved"):
                out.add(MEMORY_RESERVED, memory.reserved, gpu)

        milliwatts = self._optional(out, device, "nvmlDeviceGetPowerUsage")
        if milliwatts is not None:
            out.add(POWER, milliwatts / 1000.0, gpu)
        millijoules = self._optional(out, device, "nvmlDeviceGetTotalEnergyConsumption")
        if millijoules is not None:
            out.add(ENERGY, millijoules / 1000.0, gpu)
        celsius = self._optional(out, device, "nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU)
        if celsius is not None:
            out.add(TEMPERATURE, celsius, gpu)
        for spec, clock in ((SM_CLOCK, nvml.NVML_CLOCK_SM), (MEMORY_CLOCK, nvml.NVML_CLOCK_MEM)):
            megahertz = self._optional(out, device, "nvmlDeviceGetClockInfo", clock)
            if megahertz is not None:
                out.add(spec, megahertz * 1e6, gpu)

        self._collect_clock_events(device, out)
        self._collect_ecc(device, out)
        self._collect_xids(device, out)
        if workers or millijoules is not None:
            on_gpu = self._collect_processes(device, workers, out)
            if millijoules is not None:
                mig = self._session.mig_enabled(device)
                self._attribute_energy(
                    gpu, millijoules / 1000.0, split(on_gpu.resident, on_gpu.utilization, on_gpu.owners, mig), out
                )

    def _collect_clock_events(self, device: GpuDevice, out: Collected) -> None:
        # The "event" call replaced the "throttle" one in driver 535; older drivers have only the latter.
        reasons = self._optional(out, device, "nvmlDeviceGetCurrentClocksEventReasons")
        if reasons is None:
            reasons = self._optional(out, device, "nvmlDeviceGetCurrentClocksThrottleReasons")
        if reasons is None:
            return
        for label, constant in CLOCK_EVENT_REASONS:
            out.add(CLOCK_EVENT, 1 if reasons & getattr(self._nvml, constant) else 0, str(device.index), label)

    def _collect_ecc(self, device: GpuDevice, out: Collected) -> None:
        nvml = self._nvml
        for label, error_type in (
            ("corrected", nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
            ("uncorrected", nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        ):
            count = self._optional(out, device, "nvmlDeviceGetTotalEccErrors", error_type, nvml.NVML_VOLATILE_ECC)
            if count is not None:
                out.add(ECC_ERRORS, count, str(device.index), label)

    def _event_set(self, device: GpuDevice, out: Collected) -> Any:
        if self._event_generation != self._session.generation:
            self._event_sets.clear()  # NVML was re-opened: the old sets died with it
            self._event_generation = self._session.generation
        if device.uuid in self._event_sets:
            return self._event_sets[device.uuid]
        event_set = None
        try:
            event_set = self._session.call("nvmlEventSetCreate")
            self._session.read(device, "nvmlDeviceRegisterEvents", self._nvml.nvmlEventTypeXidCriticalError, event_set)
        except (GpuLost, NvmlUnavailable):
            if event_set is not None:
                self._free_event_set(event_set)
            raise
        except NvmlProblem as exc:
            out.notes.append(f"GPU {device.index}: XID events unavailable: {exc}")
            if event_set is not None:
                self._free_event_set(event_set)
            event_set = None
        self._event_sets[device.uuid] = event_set
        return event_set

    def _collect_xids(self, device: GpuDevice, out: Collected) -> None:
        event_set = self._event_set(device, out)
        if event_set is None:
            return
        gpu = str(device.index)
        for _ in range(MAX_EVENTS_PER_TICK):
            try:
                event = self._session.call("nvmlEventSetWait", event_set, 0)
            except NoEvent:
                break
            if event.eventType & self._nvml.nvmlEventTypeXidCriticalError:
                key = (gpu, str(event.eventData))
                self._xid_counts[key] = self._xid_counts.get(key, 0) + 1
        for (xid_gpu, xid), count in self._xid_counts.items():
            if xid_gpu == gpu:
                out.add(XID_ERRORS, count, gpu, xid)

    def _collect_processes(self, device: GpuDevice, workers: list[WorkerTarget], out: Collected) -> OnGpu:
        """The compute processes on this GPU, and each worker's share: its processes' memory
        and utilisation."""
        gpu = str(device.index)
        processes = self._optional(out, device, "nvmlDeviceGetComputeRunningProcesses") or []
        owners = self._owners_of((p.pid for p in processes), workers)
        for name in sorted(set(owners.values())):
            used = [p.usedGpuMemory for p in processes if owners.get(p.pid) == name and p.usedGpuMemory is not None]
            if used:
                out.add(WORKER_GPU_MEMORY, sum(used), name, gpu)
        resident = {p.pid for p in processes}
        if not processes:
            return OnGpu(resident, owners, {})
        utilization = self._utilization(device, out)
        for name in sorted(set(owners.values())):
            own = [sample for pid, sample in (utilization or {}).items() if owners.get(pid) == name]
            if own:
                out.add(WORKER_GPU_UTILIZATION, min(sum(s.smUtil for s in own) / 100.0, 1.0), name, gpu)
                out.add(WORKER_GPU_MEMORY_UTILIZATION, min(sum(s.memUtil for s in own) / 100.0, 1.0), name, gpu)
        sm = None if utilization is None else {pid: float(sample.smUtil) for pid, sample in utilization.items()}
        return OnGpu(resident, owners, sm)

    def _utilization(self, device: GpuDevice, out: Collected) -> dict[int, Any] | None:
        """The newest per-process utilisation sample of each process since the last tick: {}
        when no process ran a kernel, None when the driver keeps no such samples."""
        since = self._process_sample_ts.get(device.index, 0)
        try:
            samples = self._session.read(device, "nvmlDeviceGetProcessUtilization", since)
        except FieldUnsupported as exc:
            out.notes.append(str(exc))
            return None
        except NoData:
            return {}  # no sample since the last tick: nothing ran on this GPU
        if samples:
            self._process_sample_ts[device.index] = max(s.timeStamp for s in samples)
        newest: dict[int, Any] = {}
        for sample in samples:
            if sample.pid not in newest or sample.timeStamp > newest[sample.pid].timeStamp:
                newest[sample.pid] = sample
        return newest

    def _attribute_energy(self, gpu: str, joules: float, shares: Split, out: Collected) -> None:
        self._energy.record(gpu, joules, shares)
        for (worker, worker_gpu), total in sorted(self._energy.workers.items()):
            if worker_gpu == gpu:
                out.add(WORKER_ENERGY, total, worker, gpu)
        for (reason_gpu, reason), total in sorted(self._energy.unattributed.items()):
            if reason_gpu == gpu:
                out.add(UNATTRIBUTED_ENERGY, total, gpu, reason)

    def _owners_of(self, pids: Iterable[int], workers: list[WorkerTarget]) -> dict[int, str]:
        """The worker owning each GPU process: the worker whose process it is or descends from."""
        by_pid = {worker.pid: worker.name for worker in workers if worker.pid is not None}
        owners = {}
        for pid in pids:
            ancestor: int | None = pid
            for _ in range(MAX_ANCESTRY):
                if ancestor is None or ancestor <= 1:
                    break
                if ancestor in by_pid:
                    owners[pid] = by_pid[ancestor]
                    break
                ancestor = self._parent(ancestor)
        return owners

    def _parent(self, pid: int) -> int | None:
        try:
            ppid = parse_status_field(read_text(self._proc_root, pid, "status"), "PPid")
        except (OSError, ParseError):
            return None  # gone, or not visible from here
        return int(ppid) if ppid is not None and ppid.isdigit() else None

    def _free_event_set(self, event_set: Any) -> None:
        # The library is going away anyway; nothing else holds the set.
        with contextlib.suppress(NvmlProblem):
            self._session.call("nvmlEventSetFree", event_set)

    def close(self) -> None:
        """Frees the event sets; the composition root closes the shared session after."""
        for event_set in self._event_sets.values():
            if event_set is not None:
                self._free_event_set(event_set)
        self._event_sets.clear()
