"""Where each worker runs and keeps its files: its control socket, state directory, GPU and
NUMA placement, decided once at start from its definition and the host (pure).

Each worker's socket is `RUNTIME_DIR/NAME.sock`; its knobs and decisions live in
`STATE_DIR/workers/NAME/`, except the one worker of a `[worker]` table (named "worker"),
which keeps `STATE_DIR/knobs.json` and `decisions.jsonl` as before there were several.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gputuned.config import ConfigError, WorkerConfig
from gputuned.daemon.launch import worker_gpu
from gputuned.daemon.placement import Placement, choose_placement
from gputuned.procfs import parse_cpulist

SINGLE_WORKER = "worker"  # the name of the one worker of a [worker] table


@dataclass(frozen=True)
class SlotPlan:
    name: str
    control_socket: Path
    state_dir: Path
    gpu: int | None  # the NVML index of its GPU, None on the CPU
    placement: Placement | None
    placement_reason: str


def plan_slots(
    definitions: Sequence[WorkerConfig],
    runtime_dir: Path,
    state_dir: Path,
    gpu_count: int,
    gpu_nodes: dict[int, int],
    nodes: dict[int, tuple[tuple[int, ...], int]],
) -> list[SlotPlan]:
    """One plan per worker. `gpu_nodes` maps a GPU's NVML index to its NUMA node (-1 when the
    platform does not say), `nodes` the host's nodes as `placement.host_nodes` reads them.
    ConfigError names the worker and the key when the host cannot honour a definition."""
    plans = []
    for worker in definitions:
        gpu = worker_gpu(worker.device, gpu_count)
        if gpu is not None and worker.device.startswith("cuda") and gpu_count and gpu >= gpu_count:
            raise ConfigError(f"worker {worker.name}: device {worker.device} but this host has {gpu_count} GPUs")
        try:
            cpus = tuple(parse_cpulist(worker.cpus)) if worker.cpus else ()
            placement, why = choose_placement(worker.placement, gpu_nodes.get(gpu) if gpu is not None else None, nodes, cpus)
        except ValueError as exc:
            raise ConfigError(f"worker {worker.name}: cpus: {exc}") from None
        own_state = state_dir if worker.name == SINGLE_WORKER else state_dir / "workers" / worker.name
        plans.append(SlotPlan(worker.name, runtime_dir / f"{worker.name}.sock", own_state, gpu, placement, why))
    return plans
