"""A fake NVML with pynvml's own function names, constants, exception classes and structs.

It stands in for the hardware seam only: the collectors get it where they would get the
`pynvml` module. Return values are built from pynvml's real ctypes structs, errors are
pynvml's real NVMLError subclasses, and `tests/unit/test_fake_nvml.py` checks every name
and signature here against the real module, so the fake cannot drift from pynvml.

Values move with the injected clock (energy and PCIe bytes accumulate), and faults can be
injected mid-run: a lost GPU, a field turning unsupported, the library vanishing. GPU
Performance Monitoring (GPM) is there as on Hopper: samples are opaque buffers that
`nvmlGpmMetricsGet` turns into the activity between two of them; a GPU may lack it
(`gpm_supported`), run MIG (`mig_instances`, GPM per GPU instance), or have its counters
held by another profiler (`gpm_held`: NVML_ERROR_IN_USE).
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pynvml

# The pynvml constants the collectors use, re-exported under the same names.
_CONSTANTS = (
    "NVML_SUCCESS",
    "NVML_TEMPERATURE_GPU",
    "NVML_CLOCK_SM",
    "NVML_CLOCK_MEM",
    "NVML_MEMORY_ERROR_TYPE_CORRECTED",
    "NVML_MEMORY_ERROR_TYPE_UNCORRECTED",
    "NVML_VOLATILE_ECC",
    "NVML_AGGREGATE_ECC",
    "NVML_PCIE_UTIL_TX_BYTES",
    "NVML_PCIE_UTIL_RX_BYTES",
    "NVML_FI_DEV_PCIE_COUNT_TX_BYTES",
    "NVML_FI_DEV_PCIE_COUNT_RX_BYTES",
    "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG",
    "nvmlMemory_v2",
    "NVML_DEVICE_MIG_ENABLE",
    "NVML_DEVICE_MIG_DISABLE",
    "NVML_GPM_METRICS_GET_VERSION",
    "NVML_GPM_SUPPORT_VERSION",
    "NVML_GPM_METRIC_SM_UTIL",
    "NVML_GPM_METRIC_SM_OCCUPANCY",
    "NVML_GPM_METRIC_ANY_TENSOR_UTIL",
    "NVML_GPM_METRIC_DRAM_BW_UTIL",
    "NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC",
    "NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC",
    "c_nvmlGpmMetricsGet_t",
    "nvmlEventTypeXidCriticalError",
    "nvmlClocksEventReasonGpuIdle",
    "nvmlClocksEventReasonApplicationsClocksSetting",
    "nvmlClocksEventReasonSwPowerCap",
    "nvmlClocksEventReasonHwSlowdown",
    "nvmlClocksEventReasonSyncBoost",
    "nvmlClocksEventReasonSwThermalSlowdown",
    "nvmlClocksEventReasonHwThermalSlowdown",
    "nvmlClocksEventReasonHwPowerBrakeSlowdown",
    "nvmlClocksEventReasonDisplayClockSetting",
)
_ERRORS = tuple(name for name in dir(pynvml) if name.startswith(("NVML_ERROR_", "NVMLError")))

# Bus ids of an 8-GPU HGX board (the dual-socket fixture host has sysfs entries for them).
HGX_BUS_IDS = (
    "00000000:18:00.0",
    "00000000:2A:00.0",
    "00000000:3A:00.0",
    "00000000:5D:00.0",
    "00000000:9A:00.0",
    "00000000:AB:00.0",
    "00000000:BA:00.0",
    "00000000:DB:00.0",
)


@dataclass
class FakeGpu:
    """One simulated GPU. Rates are per second of the fake's clock."""

    bus_id: str
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    memory_total: int = 80 * 1024**3
    memory_reserved: int = 512 * 1024**2
    memory_used: int = 20 * 1024**3
    utilization_gpu: int = 87
    utilization_memory: int = 41
    power_mw: int = 312_000
    temperature: int = 61
    sm_clock_mhz: int = 1755
    memory_clock_mhz: int = 2619
    clock_event_reasons: int = pynvml.nvmlClocksEventReasonSwPowerCap
    ecc_corrected: int = 3
    ecc_uncorrected: int = 0
    link_generation: int = 5
    link_max_generation: int = 5
    link_width: int = 16
    link_max_width: int = 16
    pcie_replays: int = 1
    tx_bytes_per_second: float = 2.0e9
    rx_bytes_per_second: float = 9.0e9
    pcie_counters: bool = True  # False models a driver without NVML_FI_DEV_PCIE_COUNT_*
    processes: dict[int, int] = field(default_factory=dict)  # pid -> used device memory
    process_source: Callable[[], dict[int, int]] | None = None  # computed processes, merged into `processes`
    process_sm_util: int = 80
    process_sm_util_by_pid: dict[int, int] = field(default_factory=dict)  # overrides process_sm_util
    process_mem_util: int = 35
    # GPM (Hopper and newer): percentages over the sampled interval, NVLink rates in MiB/s.
    gpm_supported: bool = True
    gpm_held: bool = False  # another profiler owns the counters: sampling fails with IN_USE
    sm_active: float = 71.0
    sm_occupancy: float = 38.0
    tensor_active: float = 44.0
    dram_active: float = 52.0
    nvlink_rx_mib_per_second: float = 12_000.0
    nvlink_tx_mib_per_second: float = 11_000.0
    nvlink: bool = True  # False: a PCIe card without NVLink (those metrics come back unsupported)
    mig_instances: tuple[int, ...] = ()  # GPU instance ids; MIG is on when there are any
    lost: bool = False
    unsupported: set[str] = field(default_factory=set)  # function names raising NotSupported
    pending_xids: list[int] = field(default_factory=list)


class FakeHandle:
    """Opaque like pynvml's c_nvmlDevice_t pointer; only the fake looks inside."""

    def __init__(self, gpu: FakeGpu) -> None:
        self.gpu = gpu


class FakeMigHandle:
    """A MIG device handle: one compute instance of a GPU instance of its parent GPU."""

    def __init__(self, parent: FakeGpu, gpu_instance: int) -> None:
        self.parent = parent
        self.gpu_instance = gpu_instance


@dataclass(frozen=True)
class _GpmReading:
    """What a filled GPM sample holds: when it was taken, of which GPU (and instance)."""

    gpu: FakeGpu
    gpu_instance: int | None
    at: float


class FakeEventSet:
    def __init__(self) -> None:
        self.gpus: list[FakeGpu] = []
        self.freed = False


class FakeNvml:
    """Drop-in for the `pynvml` module as the collectors use it."""

    def __init__(
        self, gpus: list[FakeGpu], driver_version: str = "550.54.15", clock: Callable[[], float] = time.monotonic
    ) -> None:
        for name in _CONSTANTS + _ERRORS:
            setattr(self, name, getattr(pynvml, name))
        self.NVMLError = pynvml.NVMLError
        self.gpus = gpus
        self.driver_version = driver_version
        self._clock = clock
        self._started = clock()
        self.initialized = 0
        self.library_present = True
        self.calls = 0
        self.gpm_samples: dict[int, _GpmReading | None] = {}  # address of an allocated sample -> its reading

    @classmethod
    def with_gpus(cls, count: int, **gpu_fields: object) -> FakeNvml:
        gpus = [
            FakeGpu(bus_id=HGX_BUS_IDS[i % len(HGX_BUS_IDS)], uuid=f"GPU-00000000-0000-0000-0000-{i:012d}", **gpu_fields)  # type: ignore[arg-type]
            for i in range(count)
        ]
        return cls(gpus)

    # --- fault injection -------------------------------------------------------------

    def vanish(self) -> None:
        """The library disappears (driver unloaded): every call fails as uninitialised."""
        self.library_present = False
        self.initialized = 0

    def restore(self) -> None:
        self.library_present = True

    # --- helpers ---------------------------------------------------------------------

    def _elapsed(self) -> float:
        return self._clock() - self._started

    def _gpu(self, handle: FakeHandle, function: str) -> FakeGpu:
        self.calls += 1
        if not self.library_present or not self.initialized:
            raise pynvml.NVMLError_Uninitialized()
        gpu = handle.gpu
        if gpu.lost:
            raise pynvml.NVMLError_GpuIsLost()
        if function in gpu.unsupported:
            raise pynvml.NVMLError_NotSupported()
        return gpu

    def _check_library(self) -> None:
        self.calls += 1
        if not self.library_present:
            raise pynvml.NVMLError_LibraryNotFound()
        if not self.initialized:
            raise pynvml.NVMLError_Uninitialized()

    # --- pynvml API --------------------------------------------------------------------

    def nvmlInit(self) -> None:
        if not self.library_present:
            raise pynvml.NVMLError_LibraryNotFound()
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self._check_library()
        self.initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check_library()
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._check_library()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._check_library()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError_InvalidArgument()
        handle = FakeHandle(self.gpus[index])
        self._gpu(handle, "nvmlDeviceGetHandleByIndex")
        return handle

    def nvmlDeviceGetPciInfo(self, handle: FakeHandle) -> pynvml.nvmlPciInfo_t:
        gpu = self._gpu(handle, "nvmlDeviceGetPciInfo")
        info = pynvml.nvmlPciInfo_t()
        info.busId = gpu.bus_id.encode()
        info.busIdLegacy = gpu.bus_id[4:].encode()
        domain, bus, rest = gpu.bus_id.split(":")
        info.domain, info.bus, info.device = int(domain, 16), int(bus, 16), int(rest.split(".")[0], 16)
        info.pciDeviceId = 0x233010DE
        return info

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        return self._gpu(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return self._gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> pynvml.c_nvmlUtilization_t:
        gpu = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        return pynvml.c_nvmlUtilization_t(gpu=gpu.utilization_gpu, memory=gpu.utilization_memory)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle, version: int | None = None) -> pynvml.c_nvmlMemory_t:
        gpu = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        free = gpu.memory_total - gpu.memory_used - gpu.memory_reserved
        if version:
            return pynvml.c_nvmlMemory_v2_t(
                version=version, total=gpu.memory_total, reserved=gpu.memory_reserved, free=free, used=gpu.memory_used
            )
        return pynvml.c_nvmlMemory_t(total=gpu.memory_total, free=free + gpu.memory_reserved, used=gpu.memory_used)

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        return self._gpu(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetTotalEnergyConsumption")
        return int(1_000_000_000 + gpu.power_mw * self._elapsed())

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetTemperature")
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError_InvalidArgument()
        return gpu.temperature

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, type: int) -> int:  # noqa: A002 - pynvml's parameter name
        gpu = self._gpu(handle, "nvmlDeviceGetClockInfo")
        return {pynvml.NVML_CLOCK_SM: gpu.sm_clock_mhz, pynvml.NVML_CLOCK_MEM: gpu.memory_clock_mhz}[type]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        return self._gpu(handle, "nvmlDeviceGetCurrentClocksEventReasons").clock_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:
        return self._gpu(handle, "nvmlDeviceGetCurrentClocksThrottleReasons").clock_event_reasons

    def nvmlDeviceGetTotalEccErrors(self, handle: FakeHandle, errorType: int, counterType: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetTotalEccErrors")
        if errorType == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED:
            return gpu.ecc_corrected
        return gpu.ecc_uncorrected

    def nvmlEventSetCreate(self) -> FakeEventSet:
        self._check_library()
        return FakeEventSet()

    def nvmlDeviceRegisterEvents(self, handle: FakeHandle, eventTypes: int, eventSet: FakeEventSet) -> None:
        gpu = self._gpu(handle, "nvmlDeviceRegisterEvents")
        eventSet.gpus.append(gpu)

    def nvmlEventSetWait(self, eventSet: FakeEventSet, timeoutms: int) -> pynvml.c_nvmlEventData_t:
        self._check_library()
        for gpu in eventSet.gpus:
            if gpu.pending_xids:
                data = pynvml.c_nvmlEventData_t()
                data.eventType = pynvml.nvmlEventTypeXidCriticalError
                data.eventData = gpu.pending_xids.pop(0)
                return data
        raise pynvml.NVMLError_Timeout()

    def nvmlEventSetFree(self, eventSet: FakeEventSet) -> None:
        self._check_library()
        eventSet.freed = True

    def _processes(self, gpu: FakeGpu) -> dict[int, int]:
        return {**gpu.processes, **(gpu.process_source() if gpu.process_source else {})}

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[pynvml.nvmlFriendlyObject]:
        gpu = self._gpu(handle, "nvmlDeviceGetComputeRunningProcesses")
        return [
            pynvml.nvmlStructToFriendlyObject(pynvml.c_nvmlProcessInfo_t(pid=pid, usedGpuMemory=used))
            for pid, used in self._processes(gpu).items()
        ]

    def nvmlDeviceGetProcessUtilization(
        self, handle: FakeHandle, timeStamp: int
    ) -> list[pynvml.c_nvmlProcessUtilizationSample_t]:
        gpu = self._gpu(handle, "nvmlDeviceGetProcessUtilization")
        now_us = int(self._clock() * 1e6)
        processes = self._processes(gpu)
        if not processes or now_us <= timeStamp:
            raise pynvml.NVMLError_NotFound()
        return [
            pynvml.c_nvmlProcessUtilizationSample_t(
                pid=pid,
                timeStamp=now_us,
                smUtil=gpu.process_sm_util_by_pid.get(pid, gpu.process_sm_util),
                memUtil=gpu.process_mem_util,
            )
            for pid in processes
        ]

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, fieldIds: list[int]) -> object:
        gpu = self._gpu(handle, "nvmlDeviceGetFieldValues")
        values = (pynvml.c_nvmlFieldValue_t * len(fieldIds))()
        counters = {
            pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES: gpu.tx_bytes_per_second,
            pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES: gpu.rx_bytes_per_second,
        }
        for slot, field_id in zip(values, fieldIds):
            slot.fieldId = field_id
            if gpu.pcie_counters and field_id in counters:
                slot.nvmlReturn = pynvml.NVML_SUCCESS
                slot.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                slot.value.ullVal = int(counters[field_id] * self._elapsed())
            else:
                slot.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return values

    def nvmlDeviceGetPcieThroughput(self, device: FakeHandle, counter: int) -> int:
        gpu = self._gpu(device, "nvmlDeviceGetPcieThroughput")
        rate = gpu.tx_bytes_per_second if counter == pynvml.NVML_PCIE_UTIL_TX_BYTES else gpu.rx_bytes_per_second
        return int(rate / 1024)  # KB/s, as NVML reports it

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: FakeHandle) -> int:
        return self._gpu(handle, "nvmlDeviceGetCurrPcieLinkGeneration").link_generation

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: FakeHandle) -> int:
        return self._gpu(handle, "nvmlDeviceGetMaxPcieLinkGeneration").link_max_generation

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: FakeHandle) -> int:
        return self._gpu(handle, "nvmlDeviceGetCurrPcieLinkWidth").link_width

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: FakeHandle) -> int:
        return self._gpu(handle, "nvmlDeviceGetMaxPcieLinkWidth").link_max_width

    def nvmlDeviceGetPcieReplayCounter(self, handle: FakeHandle) -> int:
        return self._gpu(handle, "nvmlDeviceGetPcieReplayCounter").pcie_replays

    # --- MIG ---------------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, device: FakeHandle) -> list[int]:
        gpu = self._gpu(device, "nvmlDeviceGetMigMode")
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if gpu.mig_instances else pynvml.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, device: FakeHandle) -> int:
        self._gpu(device, "nvmlDeviceGetMaxMigDeviceCount")
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: FakeHandle, index: int) -> FakeMigHandle:
        gpu = self._gpu(device, "nvmlDeviceGetMigDeviceHandleByIndex")
        if index >= len(gpu.mig_instances):
            raise pynvml.NVMLError_NotFound()
        return FakeMigHandle(gpu, gpu.mig_instances[index])

    def nvmlDeviceGetGpuInstanceId(self, device: FakeMigHandle) -> int:
        self._check_library()
        if not isinstance(device, FakeMigHandle):
            raise pynvml.NVMLError_InvalidArgument()  # a whole GPU's handle has no instance
        return device.gpu_instance

    # --- GPM ---------------------------------------------------------------------------

    def nvmlGpmQueryDeviceSupport(self, device: FakeHandle) -> pynvml.c_nvmlGpmSupport_t:
        gpu = self._gpu(device, "nvmlGpmQueryDeviceSupport")
        return pynvml.c_nvmlGpmSupport_t(version=pynvml.NVML_GPM_SUPPORT_VERSION, isSupportedDevice=int(gpu.gpm_supported))

    def nvmlGpmSampleAlloc(self) -> pynvml.c_nvmlGpmSample_t:
        self._check_library()
        buffer = pynvml.struct_c_nvmlGpmSample_t()
        sample = pynvml.c_nvmlGpmSample_t(buffer)
        self.gpm_samples[ctypes.addressof(buffer)] = None
        return sample

    def nvmlGpmSampleFree(self, gpmSample: pynvml.c_nvmlGpmSample_t) -> None:
        self._check_library()
        key = self._sample_key(gpmSample)
        if key not in self.gpm_samples:
            raise pynvml.NVMLError_InvalidArgument()  # never allocated, or freed twice
        del self.gpm_samples[key]

    def _sample_key(self, sample: pynvml.c_nvmlGpmSample_t) -> int:
        return ctypes.addressof(sample.contents)

    def _take(self, gpu: FakeGpu, instance: int | None, sample: pynvml.c_nvmlGpmSample_t) -> pynvml.c_nvmlGpmSample_t:
        if not gpu.gpm_supported:
            raise pynvml.NVMLError_NotSupported()
        if gpu.gpm_held:
            raise pynvml.NVMLError_InUse()
        key = self._sample_key(sample)
        if key not in self.gpm_samples:
            raise pynvml.NVMLError_InvalidArgument()
        self.gpm_samples[key] = _GpmReading(gpu, instance, self._clock())
        return sample

    def nvmlGpmSampleGet(self, device: FakeHandle, gpmSample: pynvml.c_nvmlGpmSample_t) -> pynvml.c_nvmlGpmSample_t:
        gpu = self._gpu(device, "nvmlGpmSampleGet")
        if gpu.mig_instances:
            raise pynvml.NVMLError_NotSupported()  # under MIG, GPM is read per GPU instance
        return self._take(gpu, None, gpmSample)

    def nvmlGpmMigSampleGet(
        self, device: FakeHandle, gpuInstanceId: int, gpmSample: pynvml.c_nvmlGpmSample_t
    ) -> pynvml.c_nvmlGpmSample_t:
        gpu = self._gpu(device, "nvmlGpmMigSampleGet")
        if gpuInstanceId not in gpu.mig_instances:
            raise pynvml.NVMLError_InvalidArgument()
        return self._take(gpu, gpuInstanceId, gpmSample)

    def nvmlGpmMetricsGet(self, metricsGet: pynvml.c_nvmlGpmMetricsGet_t) -> pynvml.c_nvmlGpmMetricsGet_t:
        self._check_library()
        if metricsGet.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
            raise pynvml.NVMLError_ArgumentVersionMismatch()
        first = self.gpm_samples.get(self._sample_key(metricsGet.sample1))
        second = self.gpm_samples.get(self._sample_key(metricsGet.sample2))
        if first is None or second is None or first.gpu is not second.gpu or first.gpu_instance != second.gpu_instance:
            raise pynvml.NVMLError_InvalidArgument()
        if second.at <= first.at:
            raise pynvml.NVMLError_InvalidArgument()
        gpu = first.gpu
        # A GPU instance sees its own share of the board's activity: the fake splits it evenly.
        share = 1.0 / len(gpu.mig_instances) if gpu.mig_instances else 1.0
        values = {
            pynvml.NVML_GPM_METRIC_SM_UTIL: gpu.sm_active,
            pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: gpu.sm_occupancy,
            pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: gpu.tensor_active,
            pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: gpu.dram_active,
        }
        if gpu.nvlink:
            values[pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC] = gpu.nvlink_rx_mib_per_second * share
            values[pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC] = gpu.nvlink_tx_mib_per_second * share
        for metric in metricsGet.metrics[: metricsGet.numMetrics]:
            if metric.metricId in values:
                metric.nvmlReturn = pynvml.NVML_SUCCESS
                metric.value = values[metric.metricId]
            else:
                metric.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return metricsGet


def _children_on_gpu() -> dict[int, int]:
    """The calling process's children (the supervised worker) as compute processes, 6 GiB each."""
    import psutil

    return {child.pid: 6 * 1024**3 for child in psutil.Process().children(recursive=True)}


def hgx8() -> FakeNvml:
    """8 H100s of a dual-socket HGX host, for `gputuned run --nvml-module gputuned.testing.fake_nvml:hgx8`.

    The integration tests and the overhead benchmark run the real daemon with it. GPU 0
    runs the daemon's child processes (its supervised worker) and, when
    GPUTUNED_FAKE_WORKER_PID is set, that process (a worker watched with --worker-pid);
    it has also reported one XID 79. GPUTUNED_FAKE_UNSUPPORTED names NVML functions (comma-
    separated) that every GPU answers with NotSupported, as some drivers do.
    """
    refused = {name for name in os.environ.get("GPUTUNED_FAKE_UNSUPPORTED", "").split(",") if name}
    fake = FakeNvml.with_gpus(8, unsupported=refused)
    gpu0 = fake.gpus[0]
    gpu0.process_source = _children_on_gpu
    gpu0.pending_xids.append(79)
    worker_pid = os.environ.get("GPUTUNED_FAKE_WORKER_PID")
    if worker_pid:
        gpu0.processes[int(worker_pid)] = 6 * 1024**3
    return fake
