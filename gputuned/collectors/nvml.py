"""The nvml collector: per-GPU identity, utilisation, memory, power, clocks, throttling,
ECC and XID errors, and the supervised worker's own share of each GPU.

Every reading goes through NvmlSession.read, so an unsupported field is skipped (and
noted once), a lost GPU drops only that GPU from the tick, and a vanished library turns
the whole collector's success to 0 until NVML answers again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

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


class NvmlCollector:
    name = "nvml"

    def __init__(self, session: NvmlSession, nvml: Any) -> None:
        self._session = session
        self._nvml = nvml
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
        if workers:
            self._collect_workers(device, workers, out)

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

    def _collect_workers(self, device: GpuDevice, workers: list[WorkerTarget], out: Collected) -> None:
        """Each worker's share of this GPU: its processes' memory and its utilisation samples."""
        gpu = str(device.index)
        processes = self._optional(out, device, "nvmlDeviceGetComputeRunningProcesses") or []
        running = {}
        for worker in workers:
            mine = [p for p in processes if p.pid == worker.pid]
            if mine:
                running[worker.pid] = worker.name
            used = [p.usedGpuMemory for p in mine if p.usedGpuMemory is not None]
            if used:
                out.add(WORKER_GPU_MEMORY, sum(used), worker.name, gpu)
        if not running:
            return
        since = self._process_sample_ts.get(device.index, 0)
        try:
            samples = self._session.read(device, "nvmlDeviceGetProcessUtilization", since)
        except FieldUnsupported as exc:
            out.notes.append(str(exc))
            return
        except NoData:
            return  # no utilisation sample since the last tick: the worker was idle on this GPU
        if samples:
            self._process_sample_ts[device.index] = max(s.timeStamp for s in samples)
        for pid, name in running.items():
            own = [s for s in samples if s.pid == pid]
            if own:
                newest = max(own, key=lambda s: s.timeStamp)
                out.add(WORKER_GPU_UTILIZATION, newest.smUtil / 100.0, name, gpu)
                out.add(WORKER_GPU_MEMORY_UTILIZATION, newest.memUtil / 100.0, name, gpu)

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
