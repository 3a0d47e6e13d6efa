"""The gpm collector: what the SMs really did, through NVML's GPU Performance Monitoring.

"GPU utilisation" is the share of time any kernel ran; a GPU at 100% may have most of its
SMs idle. GPM (Hopper and newer, NVML only, no DCGM) says how many SMs were busy, how full
they were, how busy the tensor pipes and the DRAM were, and what crossed NVLink, over the
interval between two samples: here, between two ticks. Each GPU keeps its last sample and a
spare buffer, so one tick costs one sample and one metrics call per GPU (per GPU instance
under MIG, labelled with the instance; the whole GPU has `gpu_instance=""`).

A GPU or driver without GPM is noted once and skipped. When another profiler holds the
counters (NVML answers IN_USE: DCGM's profiling module or Nsight), the collector steps back
for `held_retry_seconds` and says so rather than fight it for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gputuned.collectors.nvml_session import (
    CountersHeld,
    FieldUnsupported,
    GpuDevice,
    NoData,
    NvmlProblem,
    NvmlSession,
    collect_per_gpu,
)
from gputuned.samples import Collected, MetricSpec, WorkerTarget

GPU_INSTANCE = ("gpu", "gpu_instance")
SM_ACTIVE = MetricSpec(
    "gputuned_gpu_sm_active_ratio",
    "gauge",
    "Share of SMs busy over the last sample interval (GPM); 1 means every SM had work all the time.",
    GPU_INSTANCE,
)
SM_OCCUPANCY = MetricSpec(
    "gputuned_gpu_sm_occupancy_ratio",
    "gauge",
    "Resident warps over the SMs' theoretical maximum, over the last sample interval (GPM).",
    GPU_INSTANCE,
)
TENSOR_ACTIVE = MetricSpec(
    "gputuned_gpu_tensor_active_ratio",
    "gauge",
    "Share of the last sample interval the SMs' tensor pipes were busy, any precision (GPM).",
    GPU_INSTANCE,
)
DRAM_ACTIVE = MetricSpec(
    "gputuned_gpu_dram_bandwidth_utilization_ratio",
    "gauge",
    "Device memory bandwidth used over its theoretical maximum, over the last sample interval (GPM).",
    GPU_INSTANCE,
)
NVLINK_THROUGHPUT = MetricSpec(
    "gputuned_gpu_nvlink_throughput_bytes_per_second",
    "gauge",
    "NVLink traffic over all links, by direction (rx: read, tx: written), over the last sample interval (GPM).",
    (*GPU_INSTANCE, "direction"),
)
SPECS = (SM_ACTIVE, SM_OCCUPANCY, TENSOR_ACTIVE, DRAM_ACTIVE, NVLINK_THROUGHPUT)

MIB = 2**20


@dataclass(frozen=True)
class GpmMetric:
    """One GPM metric read each tick: NVML's id (a pynvml constant), the series it feeds and
    the scale into the series' unit (percent to a ratio, MiB/s to bytes/s)."""

    constant: str
    spec: MetricSpec
    scale: float
    direction: str = ""  # the NVLink series' label


METRICS = (
    GpmMetric("NVML_GPM_METRIC_SM_UTIL", SM_ACTIVE, 0.01),
    GpmMetric("NVML_GPM_METRIC_SM_OCCUPANCY", SM_OCCUPANCY, 0.01),
    GpmMetric("NVML_GPM_METRIC_ANY_TENSOR_UTIL", TENSOR_ACTIVE, 0.01),
    GpmMetric("NVML_GPM_METRIC_DRAM_BW_UTIL", DRAM_ACTIVE, 0.01),
    GpmMetric("NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC", NVLINK_THROUGHPUT, MIB, "rx"),
    GpmMetric("NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC", NVLINK_THROUGHPUT, MIB, "tx"),
)

HELD_RETRY_SECONDS = 60.0


@dataclass
class _Stream:
    """One GPU (or GPU instance) being sampled: its last filled sample and a spare buffer."""

    previous: Any
    spare: Any


class GpmCollector:
    name = "gpm"

    def __init__(
        self,
        session: NvmlSession,
        nvml: Any,
        clock: Callable[[], float],
        held_retry_seconds: float = HELD_RETRY_SECONDS,
    ) -> None:
        self._session = session
        self._nvml = nvml
        self._clock = clock
        self._held_retry_seconds = held_retry_seconds
        self._ids = [getattr(nvml, metric.constant) for metric in METRICS]
        self._streams: dict[tuple[str, str], _Stream] = {}  # (GPU uuid, instance) -> its samples
        self._supported: dict[str, bool] = {}  # GPU uuid -> whether it has GPM
        self._held_until: dict[str, float] = {}  # GPU uuid -> when to try its counters again
        self._generation = 0  # the session generation the samples were allocated in
        self._request: Any = None  # the metrics request, built once (it holds ~19 KB of slots)

    def collect(self, targets: Sequence[WorkerTarget]) -> Collected:  # noqa: ARG002 - the Collector protocol; whole GPUs
        return collect_per_gpu(self._session, self._collect_device)

    def _collect_device(self, device: GpuDevice, out: Collected) -> None:
        if self._generation != self._session.generation:
            self._release()  # NVML was re-opened: the old buffers died with it
            self._generation = self._session.generation
        if not self._has_gpm(device, out):
            return
        now = self._clock()
        if now < self._held_until.get(device.uuid, now):
            return
        try:
            for instance in self._instances(device):
                self._sample(device, instance, out)
        except CountersHeld as exc:
            self._held_until[device.uuid] = now + self._held_retry_seconds
            self._forget(device.uuid)  # an interval across the gap is not this tick's
            out.notes.append(
                f"GPU {device.index}: its profiling counters are held by another profiler (DCGM's profiling module, "
                f"Nsight): GPM steps back and tries again every {self._held_retry_seconds:g} s ({exc})"
            )

    def _has_gpm(self, device: GpuDevice, out: Collected) -> bool:
        known = self._supported.get(device.uuid)
        if known is not None:
            return known
        try:
            supported = bool(self._session.read(device, "nvmlGpmQueryDeviceSupport").isSupportedDevice)
            why = "GPM needs a Hopper or newer GPU"
        except FieldUnsupported:
            supported, why = False, "this driver has no GPM (it needs driver 520 or newer)"
        if not supported:
            out.notes.append(f"GPU {device.index}: no GPM profiling counters: {why}")
        self._supported[device.uuid] = supported
        return supported

    def _instances(self, device: GpuDevice) -> list[str]:
        """ "" for the whole GPU, or under MIG the ids of its GPU instances."""
        if not self._session.mig_enabled(device):
            return [""]
        instances = set()
        for index in range(self._session.read(device, "nvmlDeviceGetMaxMigDeviceCount")):
            try:
                handle = self._session.read(device, "nvmlDeviceGetMigDeviceHandleByIndex", index)
            except NoData:
                continue  # an empty slot
            instances.add(str(self._session.call("nvmlDeviceGetGpuInstanceId", handle)))
        return sorted(instances, key=int)

    def _sample(self, device: GpuDevice, instance: str, out: Collected) -> None:
        key = (device.uuid, instance)
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(None, self._session.call("nvmlGpmSampleAlloc"))
        sample = stream.spare
        if instance:
            self._session.read(device, "nvmlGpmMigSampleGet", int(instance), sample)
        else:
            self._session.read(device, "nvmlGpmSampleGet", sample)
        previous, stream.previous = stream.previous, sample
        if previous is None:
            stream.spare = self._session.call("nvmlGpmSampleAlloc")
            return  # the first sample: an interval needs two
        stream.spare = previous
        self._report(device, instance, previous, sample, out)

    def _report(self, device: GpuDevice, instance: str, older: Any, newer: Any, out: Collected) -> None:
        nvml = self._nvml
        if self._request is None:
            self._request = nvml.c_nvmlGpmMetricsGet_t()
            self._request.version = nvml.NVML_GPM_METRICS_GET_VERSION
            self._request.numMetrics = len(self._ids)
        request = self._request
        request.sample1, request.sample2 = older, newer
        for slot, metric_id in zip(request.metrics, self._ids):
            slot.metricId = metric_id
        self._session.call("nvmlGpmMetricsGet", request)
        gpu = str(device.index)
        for slot, metric in zip(request.metrics, METRICS):
            if slot.nvmlReturn != nvml.NVML_SUCCESS:
                out.notes.append(f"GPU {gpu}: GPM has no {metric.constant} here (NVML return {slot.nvmlReturn})")
                continue
            labels = (gpu, instance, metric.direction) if metric.direction else (gpu, instance)
            out.add(metric.spec, slot.value * metric.scale, *labels)

    def _forget(self, uuid: str) -> None:
        for key in [key for key in self._streams if key[0] == uuid]:
            stream = self._streams.pop(key)
            self._free(stream.previous, stream.spare)

    def _free(self, *samples: Any) -> None:
        for sample in samples:
            if sample is not None:
                with contextlib.suppress(NvmlProblem):  # the library may already be gone
                    self._session.call("nvmlGpmSampleFree", sample)

    def _release(self) -> None:
        for uuid in {key[0] for key in self._streams}:
            self._forget(uuid)
        self._supported.clear()
        self._held_until.clear()

    def close(self) -> None:
        """Frees the sample buffers; the composition root closes the shared session after."""
        self._release()
