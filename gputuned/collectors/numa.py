"""The numa collector: where memory is allocated and faulted, system-wide, per node, and
for the worker process, plus which node each GPU hangs off.

The number that matters for tuning is the worker's off-node share: the part of its
resident pages that sit on a node other than its GPU's (or, for a CPU worker, other than
the node its CPUs are confined to). Pages there cross the inter-socket link on every
host-to-device copy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from gputuned.collectors.nvml_session import read_pci_numa_node
from gputuned.procfs import (
    ParseError,
    describe_os_error,
    parse_cpulist,
    parse_key_value_counters,
    parse_node_meminfo,
    parse_numa_maps,
    parse_proc_stat,
    parse_status_field,
    read_text,
)
from gputuned.samples import Collected, MetricSpec, WorkerTarget

# /proc/vmstat counters exported system-wide, with what they count.
VMSTAT_COUNTERS = {
    "numa_hit": "Pages allocated on the node that was intended.",
    "numa_miss": "Pages allocated on this node although another was intended.",
    "numa_foreign": "Pages intended for a node but allocated elsewhere.",
    "numa_interleave": "Interleave-policy pages allocated on the intended node.",
    "numa_local": "Pages allocated on the node of the allocating CPU.",
    "numa_other": "Pages allocated on a node other than the allocating CPU's.",
    "numa_pte_updates": "Page table entries marked for NUMA hinting faults.",
    "numa_huge_pte_updates": "Huge page table entries marked for NUMA hinting faults.",
    "numa_hint_faults": "NUMA hinting faults (automatic NUMA balancing sampling accesses).",
    "numa_hint_faults_local": "NUMA hinting faults on pages already on the accessing node.",
    "numa_pages_migrated": "Pages migrated by automatic NUMA balancing.",
    "pgmigrate_success": "Pages migrated successfully.",
    "pgmigrate_fail": "Pages that failed to migrate.",
    "pgfault": "Page faults (minor and major).",
    "pgmajfault": "Major page faults (needing I/O).",
}
VMSTAT_SPECS = {
    key: MetricSpec(f"gputuned_vmstat_{key}_total", "counter", help_text) for key, help_text in VMSTAT_COUNTERS.items()
}

NODE = ("node",)
# /sys/devices/system/node/nodeN/numastat keys -> exported per-node counters.
NUMASTAT_SPECS = {
    "numa_hit": MetricSpec("gputuned_numa_hit_total", "counter", "Pages allocated on this node as intended.", NODE),
    "numa_miss": MetricSpec(
        "gputuned_numa_miss_total", "counter", "Pages allocated on this node although another was intended.", NODE
    ),
    "numa_foreign": MetricSpec(
        "gputuned_numa_foreign_total", "counter", "Pages intended for this node but allocated elsewhere.", NODE
    ),
    "interleave_hit": MetricSpec(
        "gputuned_numa_interleave_hit_total", "counter", "Interleave-policy pages allocated on this node as intended.", NODE
    ),
    "local_node": MetricSpec(
        "gputuned_numa_local_node_total", "counter", "Pages allocated on this node by a CPU of this node.", NODE
    ),
    "other_node": MetricSpec(
        "gputuned_numa_other_node_total", "counter", "Pages allocated on this node by a CPU of another node.", NODE
    ),
}
NODE_MEMORY_TOTAL = MetricSpec("gputuned_numa_memory_total_bytes", "gauge", "Memory installed on the node.", NODE)
NODE_MEMORY_FREE = MetricSpec("gputuned_numa_memory_free_bytes", "gauge", "Free memory on the node.", NODE)
NODE_CPUS = MetricSpec("gputuned_numa_node_cpus", "gauge", "Online CPUs on the node.", NODE)
GPU_NUMA_NODE = MetricSpec(
    "gputuned_gpu_numa_node", "gauge", "NUMA node of the GPU's PCIe root (-1 when the platform does not say).", ("gpu",)
)
WORKER = ("worker",)
WORKER_PAGE_FAULTS = MetricSpec(
    "gputuned_worker_page_faults_total", "counter", "Page faults of the worker process.", ("worker", "kind")
)
WORKER_NUMA_RESIDENT = MetricSpec(
    "gputuned_worker_numa_resident_bytes", "gauge", "Worker memory resident on each node.", ("worker", "node")
)
WORKER_OFFNODE = MetricSpec(
    "gputuned_worker_offnode_ratio",
    "gauge",
    "Share of the worker's resident pages off its GPU's node (or its CPUs' node).",
    WORKER,
)
WORKER_HOME_NODE = MetricSpec(
    "gputuned_worker_home_node",
    "gauge",
    "The node the worker's memory should be on: its GPU's, or the one node of its CPUs.",
    WORKER,
)

SPECS = (
    *VMSTAT_SPECS.values(),
    *NUMASTAT_SPECS.values(),
    NODE_MEMORY_TOTAL,
    NODE_MEMORY_FREE,
    NODE_CPUS,
    GPU_NUMA_NODE,
    WORKER_PAGE_FAULTS,
    WORKER_NUMA_RESIDENT,
    WORKER_OFFNODE,
    WORKER_HOME_NODE,
)

_NODE_DIR = re.compile(r"node(\d+)")


class NumaCollector:
    name = "numa"

    def __init__(self, proc_root: Path, sys_root: Path, gpu_bus_ids: Callable[[], dict[int, str]]) -> None:
        """`gpu_bus_ids` maps GPU index -> sysfs BDF (from NVML); {} on a host without GPUs."""
        self._proc_root = proc_root
        self._sys_root = sys_root
        self._gpu_bus_ids = gpu_bus_ids

    def collect(self, targets: Sequence[WorkerTarget]) -> Collected:
        out = Collected()
        self._collect_vmstat(out)
        node_cpus = self._collect_nodes(out)
        gpu_nodes = self._collect_gpu_nodes(out)
        for target in targets:
            if target.pid is not None:
                self._collect_worker(target, node_cpus, gpu_nodes, out)
        return out

    def _collect_vmstat(self, out: Collected) -> None:
        try:
            counters = parse_key_value_counters(read_text(self._proc_root, "vmstat"))
        except OSError as exc:
            out.errors.append(describe_os_error(exc))
            return
        if not any(key.startswith("numa_") for key in counters):
            out.notes.append("/proc/vmstat has no numa_* counters: the kernel was built without NUMA")
        for key, spec in VMSTAT_SPECS.items():
            if key in counters:
                out.add(spec, counters[key])

    def _node_dirs(self) -> dict[int, Path]:
        base = self._sys_root / "devices" / "system" / "node"
        try:
            entries = list(base.iterdir())
        except OSError:
            return {}
        nodes = {}
        for entry in entries:
            match = _NODE_DIR.fullmatch(entry.name)
            if match:
                nodes[int(match.group(1))] = entry
        return nodes

    def _collect_nodes(self, out: Collected) -> dict[int, list[int]]:
        """Per-node counters and memory; returns node -> its CPUs for placement checks."""
        nodes = self._node_dirs()
        if not nodes:
            out.notes.append(f"{self._sys_root}/devices/system/node is absent: no per-node NUMA statistics")
        node_cpus: dict[int, list[int]] = {}
        for node, path in sorted(nodes.items()):
            label = str(node)
            try:
                numastat = parse_key_value_counters(read_text(path, "numastat"))
                meminfo = parse_node_meminfo(read_text(path, "meminfo"))
                cpus = parse_cpulist(read_text(path, "cpulist"))
            except OSError as exc:
                out.errors.append(describe_os_error(exc))
                continue
            except ParseError as exc:
                out.errors.append(f"node {node}: {exc}")
                continue
            for key, spec in NUMASTAT_SPECS.items():
                if key in numastat:
                    out.add(spec, numastat[key], label)
            if "MemTotal" in meminfo:
                out.add(NODE_MEMORY_TOTAL, meminfo["MemTotal"], label)
            if "MemFree" in meminfo:
                out.add(NODE_MEMORY_FREE, meminfo["MemFree"], label)
            out.add(NODE_CPUS, len(cpus), label)
            node_cpus[node] = cpus
        return node_cpus

    def _collect_gpu_nodes(self, out: Collected) -> dict[int, int]:
        gpu_nodes = {}
        for gpu, bdf in sorted(self._gpu_bus_ids().items()):
            node = read_pci_numa_node(self._sys_root, bdf)
            out.add(GPU_NUMA_NODE, node, str(gpu))
            gpu_nodes[gpu] = node
        return gpu_nodes

    def _home_node(self, target: WorkerTarget, node_cpus: dict[int, list[int]], gpu_nodes: dict[int, int]) -> int | None:
        """The worker's GPU's node; for a CPU worker, or a GPU whose node the platform does not
        say (-1, common on single-socket hosts), the one node holding all its allowed CPUs."""
        if target.gpu is not None and gpu_nodes.get(target.gpu, -1) >= 0:
            return gpu_nodes[target.gpu]
        if target.pid is None:
            return None
        try:
            status = read_text(self._proc_root, target.pid, "status")
        except OSError:
            return None
        allowed_text = parse_status_field(status, "Cpus_allowed_list")
        if allowed_text is None:
            return None
        try:
            allowed = set(parse_cpulist(allowed_text))
        except ParseError:
            return None
        homes = [node for node, cpus in node_cpus.items() if allowed & set(cpus)]
        return homes[0] if len(homes) == 1 else None

    def _collect_worker(
        self, target: WorkerTarget, node_cpus: dict[int, list[int]], gpu_nodes: dict[int, int], out: Collected
    ) -> None:
        if target.pid is None:
            return
        try:
            stat = parse_proc_stat(read_text(self._proc_root, target.pid, "stat"))
        except (FileNotFoundError, ProcessLookupError):
            out.notes.append(f"worker pid {target.pid} is gone")
            return
        except OSError as exc:
            out.errors.append(describe_os_error(exc))
            return
        except ParseError as exc:
            out.errors.append(f"worker pid {target.pid}: {exc}")
            return
        out.add(WORKER_PAGE_FAULTS, stat.minor_faults, target.name, "minor")
        out.add(WORKER_PAGE_FAULTS, stat.major_faults, target.name, "major")

        try:
            resident = parse_numa_maps(read_text(self._proc_root, target.pid, "numa_maps"))
        except (FileNotFoundError, ProcessLookupError):
            if not (self._proc_root / str(target.pid)).exists():
                out.notes.append(f"worker pid {target.pid} is gone")  # it exited between the two reads
            else:
                out.notes.append(f"no /proc/{target.pid}/numa_maps: the kernel was built without NUMA")
            return
        except OSError as exc:
            out.errors.append(describe_os_error(exc))
            return
        for node, size in sorted(resident.items()):
            out.add(WORKER_NUMA_RESIDENT, size, target.name, str(node))
        home = self._home_node(target, node_cpus, gpu_nodes)
        total = sum(resident.values())
        if home is not None:
            out.add(WORKER_HOME_NODE, home, target.name)
            if total:
                out.add(WORKER_OFFNODE, 1.0 - resident.get(home, 0) / total, target.name)

    def close(self) -> None:
        """Holds nothing that needs releasing."""
