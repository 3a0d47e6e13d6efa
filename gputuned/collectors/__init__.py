"""Collectors READ the machine and never change it. This module is their registry.

Each entry has a name (the `collector` label and the `[collectors]` config key), whether
it runs by default, and a factory taking the shared context, like node_exporter's
registerCollector(name, defaultEnabled, factory).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from gputuned.collectors.base import Collector
from gputuned.collectors.gpm import GpmCollector
from gputuned.collectors.host import HostCollector
from gputuned.collectors.kubelet import KubeletCollector
from gputuned.collectors.numa import NumaCollector
from gputuned.collectors.nvml import NvmlCollector
from gputuned.collectors.nvml_session import NvmlSession
from gputuned.collectors.pcie import PcieCollector


@dataclass(frozen=True)
class CollectorContext:
    """What collectors are built from: the roots they read and the modules they call."""

    proc_root: Path
    sys_root: Path
    kubelet_socket: Path
    pod_logs_dir: Path
    nvml_session: NvmlSession
    nvml: ModuleType
    gpu_bus_ids: Callable[[], dict[int, str]]  # GPU index -> sysfs BDF; {} when NVML is off
    psutil: ModuleType
    clock: Callable[[], float]


@dataclass(frozen=True)
class CollectorEntry:
    name: str
    enabled_by_default: bool
    build: Callable[[CollectorContext], Collector]
    description: str


def _nvml(ctx: CollectorContext) -> Any:
    return NvmlCollector(ctx.nvml_session, ctx.nvml, ctx.proc_root)


def _gpm(ctx: CollectorContext) -> Any:
    return GpmCollector(ctx.nvml_session, ctx.nvml, ctx.clock)


def _pcie(ctx: CollectorContext) -> Any:
    return PcieCollector(ctx.nvml_session, ctx.nvml, ctx.clock)


def _numa(ctx: CollectorContext) -> Any:
    return NumaCollector(ctx.proc_root, ctx.sys_root, ctx.gpu_bus_ids)


def _host(ctx: CollectorContext) -> Any:
    return HostCollector(ctx.psutil)


def _kubelet(ctx: CollectorContext) -> Any:
    return KubeletCollector(ctx.kubelet_socket, ctx.pod_logs_dir, ctx.proc_root, ctx.nvml_session)


COLLECTORS = (
    CollectorEntry("nvml", True, _nvml, "GPUs through NVML: utilisation, memory, power, clocks, throttling, ECC, XID"),
    CollectorEntry("gpm", True, _gpm, "GPM profiling counters (Hopper+): SM activity and occupancy, tensor, DRAM, NVLink"),
    CollectorEntry("pcie", True, _pcie, "PCIe tx/rx bytes, link generation/width/capacity, utilisation, replays"),
    CollectorEntry("numa", True, _numa, "/proc/vmstat, per-node numastat, worker faults and page placement, GPU nodes"),
    CollectorEntry("host", True, _host, "psutil: per-core CPU busy, memory, worker CPU/RSS/threads"),
    CollectorEntry("kubelet", True, _kubelet, "Kubernetes: the pods holding (PodResources API) and using (cgroups) each GPU"),
)


def build_collectors(enabled: dict[str, bool], context: CollectorContext) -> list[Collector]:
    """The collectors whose entry in `enabled` (default: the entry's own default) is true."""
    return [entry.build(context) for entry in COLLECTORS if enabled.get(entry.name, entry.enabled_by_default)]
