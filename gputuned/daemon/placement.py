"""NUMA placement of the worker: which node, which CPUs, and how it is applied.

The daemon picks the node (the worker GPU's node; on a CPU-only host with several
nodes, the node with the most free memory) and starts the worker through
`python -m gputuned.daemon.placement_exec`, a tiny shim that sets the CPU affinity and a
memory policy preferring that node in the child, then execs the worker. Doing it in a
fresh process avoids preexec_fn in our threaded daemon, and needs neither libnuma nor
numactl.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from gputuned.procfs import ParseError, parse_cpulist, parse_node_meminfo, read_text

MPOL_PREFERRED = 1
# set_mempolicy(2) has no glibc wrapper; these are its syscall numbers.
_SET_MEMPOLICY = {"x86_64": 238, "aarch64": 237, "ppc64le": 261}


@dataclass(frozen=True)
class Placement:
    node: int
    cpus: tuple[int, ...]

    def cpulist(self) -> str:
        return format_cpulist(self.cpus)


def format_cpulist(cpus: tuple[int, ...] | list[int]) -> str:
    """(0,1,2,3,8) -> '0-3,8', the kernel's cpulist format."""
    ranges: list[str] = []
    ordered = sorted(cpus)
    start = previous = None
    for cpu in [*ordered, None]:
        if cpu is not None and previous is not None and cpu == previous + 1:
            previous = cpu
            continue
        if start is not None:
            ranges.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = cpu
    return ",".join(ranges)


def host_nodes(sys_root: Path) -> dict[int, tuple[tuple[int, ...], int]]:
    """node -> (its online CPUs, its free memory in bytes); {} without NUMA information."""
    base = sys_root / "devices" / "system" / "node"
    nodes = {}
    try:
        entries = sorted(base.glob("node[0-9]*"))
    except OSError:
        return {}
    for entry in entries:
        try:
            cpus = tuple(parse_cpulist(read_text(entry, "cpulist")))
            free = parse_node_meminfo(read_text(entry, "meminfo")).get("MemFree", 0)
        except (OSError, ParseError):
            continue
        if cpus:
            nodes[int(entry.name[4:])] = (cpus, free)
    return nodes


def choose_placement(
    setting: str, gpu_node: int | None, nodes: dict[int, tuple[tuple[int, ...], int]], cpus: tuple[int, ...] = ()
) -> tuple[Placement | None, str]:
    """(placement or None, why) for `placement` = auto | off | node number and an explicit
    `cpus` set, given the host's nodes as `host_nodes` reads them (node -> (CPUs, free
    bytes)). Pure; ValueError when `cpus` names a CPU the host does not have online.

    Explicit CPUs win (a CPU-only host split between workers): the memory then prefers the
    node holding most of them."""
    if cpus:
        online = {cpu for node_cpus, _free in nodes.values() for cpu in node_cpus}
        missing = sorted(set(cpus) - online) if nodes else []
        if missing:
            raise ValueError(
                f"CPUs {format_cpulist(missing)} are not online on this host (online: {format_cpulist(sorted(online))})"
            )
        holding = {node: len(set(cpus) & set(node_cpus)) for node, (node_cpus, _free) in nodes.items()}
        node = max(holding, key=lambda n: holding[n]) if holding else 0
        return Placement(node, tuple(sorted(cpus))), f"CPUs {format_cpulist(sorted(cpus))} as configured, memory on node {node}"
    if setting == "off":
        return None, "placement is off"
    if setting.isdigit():
        node = int(setting)
        if node not in nodes:
            return None, f"NUMA node {node} has no online CPUs on this host (nodes: {sorted(nodes) or 'none'})"
        return Placement(node, nodes[node][0]), f"node {node} as configured"
    if gpu_node is not None and gpu_node >= 0 and gpu_node in nodes:
        return Placement(gpu_node, nodes[gpu_node][0]), f"node {gpu_node}, the worker GPU's node"
    if len(nodes) > 1:
        node = max(nodes, key=lambda n: nodes[n][1])
        return Placement(node, nodes[node][0]), f"node {node}, the node with the most free memory"
    return None, "a single NUMA node: nothing to place"


def shim_command(placement: Placement, command: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gputuned.daemon.placement_exec",
        "--node",
        str(placement.node),
        "--cpus",
        placement.cpulist(),
        "--",
        *command,
    ]


def set_preferred_node(node: int) -> None:
    """set_mempolicy(MPOL_PREFERRED, {node}) for the calling process; OSError if refused."""
    number = _SET_MEMPOLICY.get(platform.machine())
    if number is None:
        raise OSError(f"set_mempolicy: unknown syscall number on {platform.machine()}")
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    mask_words = node // 64 + 1
    mask = (ctypes.c_ulong * mask_words)()
    mask[node // 64] = 1 << (node % 64)
    if libc.syscall(number, MPOL_PREFERRED, mask, ctypes.c_ulong(mask_words * 64 + 1)) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"set_mempolicy: {os.strerror(error)}")
