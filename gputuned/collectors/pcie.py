"""The pcie collector: bytes moved over each GPU's PCIe link, the link's shape and capacity,
how busy it is, and its replay (retransmission) counter.

Byte counters come from NVML's cumulative field counters (NVML_FI_DEV_PCIE_COUNT_*_BYTES)
where the driver has them. Older drivers only offer nvmlDeviceGetPcieThroughput, a 20 ms
rate sample that blocks for each direction; we then integrate the rate over the tick to
keep a counter. Both run in the sampler thread, never on the scrape path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gputuned.collectors.nvml_session import GpuDevice, NvmlSession, collect_per_gpu
from gputuned.samples import Collected, MetricSpec, WorkerTarget

GPU = ("gpu",)
TX_BYTES = MetricSpec("gputuned_pcie_tx_bytes_total", "counter", "Bytes the GPU sent over PCIe (device to host).", GPU)
RX_BYTES = MetricSpec("gputuned_pcie_rx_bytes_total", "counter", "Bytes the GPU received over PCIe (host to device).", GPU)
LINK_GENERATION = MetricSpec("gputuned_pcie_link_generation", "gauge", "Current PCIe link generation (drops when idle).", GPU)
LINK_MAX_GENERATION = MetricSpec("gputuned_pcie_link_max_generation", "gauge", "Highest generation the link supports.", GPU)
LINK_WIDTH = MetricSpec("gputuned_pcie_link_width", "gauge", "Current PCIe link width in lanes.", GPU)
LINK_MAX_WIDTH = MetricSpec("gputuned_pcie_link_max_width", "gauge", "Widest the link can train, in lanes.", GPU)
LINK_CAPACITY = MetricSpec(
    "gputuned_pcie_link_capacity_bytes_per_second",
    "gauge",
    "Payload bandwidth of the link per direction at its current generation and width.",
    GPU,
)
UTILIZATION = MetricSpec(
    "gputuned_pcie_utilization_ratio",
    "gauge",
    "Busier direction's throughput over the tick, as a share of the link capacity.",
    GPU,
)
REPLAYS = MetricSpec(
    "gputuned_pcie_replays_total", "counter", "PCIe replays (link-level retransmissions); growth means a bad link.", GPU
)

SPECS = (
    TX_BYTES,
    RX_BYTES,
    LINK_GENERATION,
    LINK_MAX_GENERATION,
    LINK_WIDTH,
    LINK_MAX_WIDTH,
    LINK_CAPACITY,
    UTILIZATION,
    REPLAYS,
)

# Per-lane payload bandwidth in bytes/s: transfer rate x line-code efficiency / 8
# (8b/10b for gen 1-2, 128b/130b for gen 3-5, 242/256 FLIT for gen 6).
_LANE_BYTES_PER_SECOND = {
    1: 2.5e9 * 8 / 10 / 8,
    2: 5.0e9 * 8 / 10 / 8,
    3: 8.0e9 * 128 / 130 / 8,
    4: 16.0e9 * 128 / 130 / 8,
    5: 32.0e9 * 128 / 130 / 8,
    6: 64.0e9 * 242 / 256 / 8,
}


def link_capacity_bytes_per_second(generation: int, width: int) -> float | None:
    """Payload bandwidth of one direction of a link, or None for an unknown generation."""
    lane = _LANE_BYTES_PER_SECOND.get(generation)
    return None if lane is None or width <= 0 else lane * width


@dataclass(slots=True)
class _LinkCounters:
    """What one GPU's link looked like at the previous tick, to turn counters into rates."""

    at: float
    tx: float
    rx: float


class PcieCollector:
    name = "pcie"

    def __init__(self, session: NvmlSession, nvml: Any, clock: Any) -> None:
        self._session = session
        self._nvml = nvml
        self._clock = clock
        self._previous: dict[str, _LinkCounters] = {}  # uuid -> counters at the last tick
        self._integrated: dict[str, tuple[float, float]] = {}  # uuid -> (tx, rx) from throughput

    def collect(self, targets: Sequence[WorkerTarget]) -> Collected:  # noqa: ARG002 - the Collector protocol; links, not processes
        return collect_per_gpu(self._session, self._collect_device)

    def _optional(self, out: Collected, device: GpuDevice, function: str, *args: Any) -> Any:
        return self._session.read_or_note(out.notes, device, function, *args)

    def _byte_counters(self, device: GpuDevice, now: float, out: Collected) -> tuple[float, float] | None:
        """Cumulative (tx, rx) bytes from the field counters, else integrated throughput."""
        nvml = self._nvml
        values = self._optional(
            out, device, "nvmlDeviceGetFieldValues", [nvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, nvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES]
        )
        if values is not None and all(v.nvmlReturn == nvml.NVML_SUCCESS for v in values):
            return float(values[0].value.ullVal), float(values[1].value.ullVal)
        tx_kib = self._optional(out, device, "nvmlDeviceGetPcieThroughput", nvml.NVML_PCIE_UTIL_TX_BYTES)
        rx_kib = self._optional(out, device, "nvmlDeviceGetPcieThroughput", nvml.NVML_PCIE_UTIL_RX_BYTES)
        if tx_kib is None or rx_kib is None:
            return None
        tx, rx = self._integrated.get(device.uuid, (0.0, 0.0))
        previous = self._previous.get(device.uuid)
        if previous is not None:
            elapsed = now - previous.at
            tx += tx_kib * 1024 * elapsed
            rx += rx_kib * 1024 * elapsed
        self._integrated[device.uuid] = (tx, rx)
        return tx, rx

    def _collect_device(self, device: GpuDevice, out: Collected) -> None:
        gpu = str(device.index)
        now = self._clock()
        counters = self._byte_counters(device, now, out)

        generation = self._optional(out, device, "nvmlDeviceGetCurrPcieLinkGeneration")
        width = self._optional(out, device, "nvmlDeviceGetCurrPcieLinkWidth")
        for spec, value in (
            (LINK_GENERATION, generation),
            (LINK_WIDTH, width),
            (LINK_MAX_GENERATION, self._optional(out, device, "nvmlDeviceGetMaxPcieLinkGeneration")),
            (LINK_MAX_WIDTH, self._optional(out, device, "nvmlDeviceGetMaxPcieLinkWidth")),
            (REPLAYS, self._optional(out, device, "nvmlDeviceGetPcieReplayCounter")),
        ):
            if value is not None:
                out.add(spec, value, gpu)
        capacity = None
        if generation is not None and width is not None:
            capacity = link_capacity_bytes_per_second(generation, width)
        if capacity is not None:
            out.add(LINK_CAPACITY, capacity, gpu)

        if counters is None:
            return
        tx, rx = counters
        out.add(TX_BYTES, tx, gpu)
        out.add(RX_BYTES, rx, gpu)
        previous = self._previous.get(device.uuid)
        self._previous[device.uuid] = _LinkCounters(now, tx, rx)
        if previous is not None and capacity and now > previous.at:
            elapsed = now - previous.at
            busiest = max(tx - previous.tx, rx - previous.rx, 0.0) / elapsed
            out.add(UTILIZATION, min(busiest / capacity, 1.0), gpu)

    def close(self) -> None:
        """Nothing of its own to release; the composition root closes the shared session."""
