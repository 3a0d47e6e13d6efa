"""The judgements of the GPU check (bench/gpu.py), apart from the GPU they judge.

The check reads the same GPU two ways at once, through the daemon's /metrics and through
`nvidia-smi --query-gpu`, and compares them field by field; it counts the bytes the worker
copied to the device against the growth of NVML's PCIe receive counter; it compares the GPM
figures of a GPU at rest and under ResNet-50 with what that load must show, and the energy
charged to a worker with the board's power over time; it reads a tuning run's decisions for
the out-of-memory revert. All of that is plain data in, verdicts out,
so it is tested here against the fake NVML and a fake nvidia-smi, and runs unchanged on a
GPU host.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gputuned.collectors import gpm, nvml, pcie


@dataclass(frozen=True)
class Field:
    """One `nvidia-smi --query-gpu` field and the daemon series that must agree with it."""

    smi: str  # the query name, e.g. "memory.used"
    metric: str  # the daemon's series (label gpu)
    scale: float  # multiplies the daemon's value into nvidia-smi's unit (with nounits)
    absolute: float  # agreement within this many of nvidia-smi's units...
    relative: float  # ...or within this share of nvidia-smi's value, whichever is looser
    volatile: bool  # changes from one instant to the next: agreement in most rounds is enough


MIB = 2**20
FIELDS = (
    Field("utilization.gpu", nvml.UTILIZATION.name, 100.0, 15.0, 0.0, True),
    Field("memory.used", nvml.MEMORY_USED.name, 1 / MIB, 64.0, 0.05, True),
    Field("memory.total", nvml.MEMORY_TOTAL.name, 1 / MIB, 1.0, 0.0, False),
    Field("power.draw", nvml.POWER.name, 1.0, 15.0, 0.15, True),
    Field("temperature.gpu", nvml.TEMPERATURE.name, 1.0, 3.0, 0.0, True),
    Field("clocks.sm", nvml.SM_CLOCK.name, 1e-6, 30.0, 0.15, True),
    Field("pcie.link.gen.current", pcie.LINK_GENERATION.name, 1.0, 0.0, 0.0, True),  # drops when idle
    Field("pcie.link.width.current", pcie.LINK_WIDTH.name, 1.0, 0.0, 0.0, False),
)
SMI_QUERY = ",".join(field.smi for field in FIELDS)

# Every GPU must have these series (a driver that refuses one says so in the daemon's log).
PER_GPU_FAMILIES = tuple(spec.name for spec in (*nvml.SPECS, *pcie.SPECS) if spec.labels == ("gpu",))
PLAUSIBLE = {  # series -> (lowest, highest) a working GPU can report
    nvml.UTILIZATION.name: (0.0, 1.0),
    nvml.TEMPERATURE.name: (0.0, 110.0),
    nvml.POWER.name: (1.0, 2000.0),
    nvml.SM_CLOCK.name: (100e6, 4000e6),
    nvml.MEMORY_TOTAL.name: (1 * 2**30, 1024 * 2**30),
    pcie.LINK_GENERATION.name: (1.0, 7.0),
    pcie.LINK_WIDTH.name: (1.0, 32.0),
}


class SmiError(ValueError):
    """nvidia-smi's output is not the CSV the query asked for."""


def parse_smi_csv(text: str, fields: Sequence[Field] = FIELDS) -> list[dict[str, float | None]]:
    """`nvidia-smi --query-gpu=SMI_QUERY --format=csv,noheader,nounits` -> one row per GPU, in
    nvidia-smi's order (PCI bus order, as the daemon's gpu index with CUDA_DEVICE_ORDER=PCI_BUS_ID).
    A field the driver does not report ("[N/A]", "[Not Supported]") is None."""
    rows = []
    for number, line in enumerate(filter(None, (line.strip() for line in text.splitlines())), 1):
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(fields):
            raise SmiError(f"line {number}: {len(cells)} values for {len(fields)} fields: {line!r}")
        row: dict[str, float | None] = {}
        for field, cell in zip(fields, cells):
            if cell.startswith("[") or cell in ("N/A", ""):
                row[field.smi] = None
                continue
            try:
                row[field.smi] = float(cell)
            except ValueError:
                raise SmiError(f"line {number}: {field.smi} is {cell!r}, not a number") from None
        rows.append(row)
    return rows


def per_gpu(metrics_text: str) -> dict[str, dict[str, float]]:
    """The daemon's series with a `gpu` label and no other distinguishing label: series -> gpu -> value."""
    values: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if set(sample.labels) == {"gpu"}:
                values.setdefault(sample.name, {})[sample.labels["gpu"]] = sample.value
    return values


@dataclass(frozen=True)
class Agreement:
    gpu: str
    field: str
    daemon: float | None  # in nvidia-smi's unit
    smi: float | None
    agrees: bool
    why: str  # empty when it agrees


def compare(daemon: Mapping[str, Mapping[str, float]], smi: Sequence[Mapping[str, float | None]]) -> list[Agreement]:
    """Each field of each GPU nvidia-smi reported, against the daemon's series read at the same time."""
    found = []
    for index, row in enumerate(smi):
        gpu = str(index)
        for field in FIELDS:
            expected = row.get(field.smi)
            raw = daemon.get(field.metric, {}).get(gpu)
            value = None if raw is None else raw * field.scale
            if expected is None:
                found.append(Agreement(gpu, field.smi, value, None, True, ""))  # the driver does not say
                continue
            if value is None:
                found.append(Agreement(gpu, field.smi, None, expected, False, f"the daemon has no {field.metric}"))
                continue
            allowed = max(field.absolute, field.relative * abs(expected))
            agrees = abs(value - expected) <= allowed
            why = "" if agrees else f"{value:.1f} against nvidia-smi's {expected:.1f} (allowed +-{allowed:.1f})"
            found.append(Agreement(gpu, field.smi, value, expected, agrees, why))
    return found


def disagreements(rounds: Sequence[Sequence[Agreement]]) -> list[str]:
    """Fields that disagree: a steady one in any round, a volatile one in most rounds (it may
    move between the two reads)."""
    volatile = {field.smi for field in FIELDS if field.volatile}
    by_key: dict[tuple[str, str], list[Agreement]] = {}
    for agreements in rounds:
        for agreement in agreements:
            by_key.setdefault((agreement.gpu, agreement.field), []).append(agreement)
    problems = []
    for (gpu, field), seen in sorted(by_key.items()):
        wrong = [a for a in seen if not a.agrees]
        if wrong and (field not in volatile or 2 * len(wrong) > len(seen)):
            problems.append(f"GPU {gpu} {field}: {wrong[0].why} in {len(wrong)} of {len(seen)} reads")
    return problems


# The daemon's log line for a reading the driver does not support (a collector's note, at INFO):
# "... INFO gputuned.sampler: collector nvml: GPU 0: nvmlDeviceGetTotalEnergyConsumption: Not Supported"
_REFUSAL = re.compile(r" INFO \S+: collector \w+: GPU (\d+): (nvml\w+)")


def refused_readings(log: str) -> set[tuple[str, str]]:
    """(gpu, NVML function) of every reading the daemon logged as unsupported."""
    return {(match[1], match[2]) for match in map(_REFUSAL.search, log.splitlines()) if match}


# The NVML readings behind each per-GPU series (as the collectors make them): the series may
# be absent when the driver refuses any of them.
_GENERATION, _WIDTH, _THROUGHPUT = (
    "nvmlDeviceGetCurrPcieLinkGeneration",
    "nvmlDeviceGetCurrPcieLinkWidth",
    "nvmlDeviceGetPcieThroughput",
)
SOURCES: dict[str, tuple[str, ...]] = {
    nvml.UTILIZATION.name: ("nvmlDeviceGetUtilizationRates",),
    nvml.MEMORY_UTILIZATION.name: ("nvmlDeviceGetUtilizationRates",),
    nvml.MEMORY_USED.name: ("nvmlDeviceGetMemoryInfo",),
    nvml.MEMORY_TOTAL.name: ("nvmlDeviceGetMemoryInfo",),
    nvml.MEMORY_FREE.name: ("nvmlDeviceGetMemoryInfo",),
    nvml.MEMORY_RESERVED.name: ("nvmlDeviceGetMemoryInfo",),  # its v2 form, which older drivers lack
    nvml.POWER.name: ("nvmlDeviceGetPowerUsage",),
    nvml.ENERGY.name: ("nvmlDeviceGetTotalEnergyConsumption",),
    nvml.TEMPERATURE.name: ("nvmlDeviceGetTemperature",),
    nvml.SM_CLOCK.name: ("nvmlDeviceGetClockInfo",),
    nvml.MEMORY_CLOCK.name: ("nvmlDeviceGetClockInfo",),
    pcie.TX_BYTES.name: (_THROUGHPUT,),  # the byte counters, else the integrated throughput
    pcie.RX_BYTES.name: (_THROUGHPUT,),
    pcie.LINK_GENERATION.name: (_GENERATION,),
    pcie.LINK_WIDTH.name: (_WIDTH,),
    pcie.LINK_MAX_GENERATION.name: ("nvmlDeviceGetMaxPcieLinkGeneration",),
    pcie.LINK_MAX_WIDTH.name: ("nvmlDeviceGetMaxPcieLinkWidth",),
    pcie.LINK_CAPACITY.name: (_GENERATION, _WIDTH),
    pcie.UTILIZATION.name: (_GENERATION, _WIDTH, _THROUGHPUT),
    pcie.REPLAYS.name: ("nvmlDeviceGetPcieReplayCounter",),
}


def missing_families(daemon: Mapping[str, Mapping[str, float]], gpus: Iterable[str], refused: set[tuple[str, str]]) -> list[str]:
    """Per-GPU series that are absent though the driver did not refuse the NVML reading
    behind them (`refused`, from refused_readings)."""
    missing = []
    for name in PER_GPU_FAMILIES:
        lacking = [
            gpu
            for gpu in gpus
            if gpu not in daemon.get(name, {}) and not any((gpu, function) in refused for function in SOURCES[name])
        ]
        if lacking:
            missing.append(f"{name} for GPU {', '.join(lacking)}")
    return missing


def implausible(daemon: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Values no working GPU reports (a unit or scale slip shows here first)."""
    problems = []
    for name, (low, high) in PLAUSIBLE.items():
        for gpu, value in sorted(daemon.get(name, {}).items()):
            if not low <= value <= high or math.isnan(value):
                problems.append(f"GPU {gpu} {name} = {value:g}, outside {low:g}..{high:g}")
    used, total = daemon.get(nvml.MEMORY_USED.name, {}), daemon.get(nvml.MEMORY_TOTAL.name, {})
    for gpu, value in sorted(used.items()):
        if gpu in total and value > total[gpu]:
            problems.append(f"GPU {gpu} uses {value:g} bytes of {total[gpu]:g}")
    return problems


def copy_agreement(worker_h2d_bytes: float, pcie_rx_bytes: float, seconds: float) -> tuple[float, str | None]:
    """NVML's PCIe receive counter growth over the bytes the worker says it copied to the
    device in the same interval, and what is wrong with it (None if nothing). The link
    also carries the outputs' requests, descriptors and other processes' traffic, so the
    counter may exceed the worker's count; it may not fall far short of it."""
    if worker_h2d_bytes <= 0:
        return math.nan, "the worker counted no host-to-device bytes (no load, or not on CUDA)"
    ratio = pcie_rx_bytes / worker_h2d_bytes
    if ratio < 0.9:
        return ratio, (
            f"NVML's PCIe rx counter grew {pcie_rx_bytes / 1e6:.1f} MB in {seconds:.0f} s, less than the "
            f"{worker_h2d_bytes / 1e6:.1f} MB the worker copied"
        )
    return ratio, None


def oom_verdict(decisions: Sequence[Mapping[str, Any]], ceilings: Mapping[str, int], batch_before: int) -> str | None:
    """What is wrong with a run in which a batch size over the memory cap was tried: None
    when the guard reverted it for out-of-memory events and learned a ceiling below it."""
    reverts = [
        d
        for d in decisions
        if d.get("knob") == "max_batch_size" and d.get("action") == "revert" and (d.get("trial") or {}).get("oom", 0)
    ]
    if not reverts:
        tried = [d for d in decisions if d.get("knob") == "max_batch_size" and d.get("action") == "apply"]
        return f"no max_batch_size revert for out-of-memory events (batch trials: {[(d['old'], d['new']) for d in tried]})"
    revert = reverts[-1]
    if revert.get("new") != batch_before:
        return f"the revert went to max_batch_size={revert.get('new')}, not back to {batch_before}"
    ceiling = ceilings.get("max_batch_size")
    old = revert.get("old")
    if ceiling is None or not isinstance(old, int) or ceiling >= old:
        return f"no ceiling below max_batch_size={old} was learned (ceilings: {dict(ceilings)})"
    return None


# --- GPM and energy ----------------------------------------------------------------------------

GPM_SERIES = (gpm.SM_ACTIVE.name, gpm.SM_OCCUPANCY.name, gpm.TENSOR_ACTIVE.name, gpm.DRAM_ACTIVE.name)
IDLE_SM_ACTIVE = 0.05  # an idle GPU's SMs are busy less than this
LOADED_SM_ACTIVE = 0.3  # ResNet-50 under closed-loop load keeps at least this share of the SMs busy
SM_OVER_UTILIZATION = 0.05  # SM activity cannot exceed the time any kernel ran (utilisation) beyond sampling skew


def gpm_verdict(idle: Mapping[str, float | None], loaded: Mapping[str, float | None]) -> list[str]:
    """What is wrong with a GPU's GPM figures (series -> mean over a window; the GPU's
    utilisation under nvml.UTILIZATION) read idle and then under a running ResNet-50: each
    ratio within 0..1, the SMs near idle at rest, every activity higher under the load, and
    SM activity no more than the time a kernel ran."""
    problems = []
    for name, window in (("idle", idle), ("loaded", loaded)):
        for series in GPM_SERIES:
            value = window.get(series)
            if value is None:
                problems.append(f"{name}: no {series}")
            elif not 0.0 <= value <= 1.0:
                problems.append(f"{name}: {series} = {value:g}, outside 0..1")
        active, utilization = window.get(gpm.SM_ACTIVE.name), window.get(nvml.UTILIZATION.name)
        if active is not None and utilization is not None and active > utilization + SM_OVER_UTILIZATION:
            problems.append(f"{name}: SMs {active:.0%} active while a kernel ran only {utilization:.0%} of the time")
    idle_active, loaded_active = idle.get(gpm.SM_ACTIVE.name), loaded.get(gpm.SM_ACTIVE.name)
    if idle_active is not None and idle_active > IDLE_SM_ACTIVE:
        problems.append(f"idle: SMs {idle_active:.0%} active (an idle GPU: under {IDLE_SM_ACTIVE:.0%})")
    if loaded_active is not None and loaded_active < LOADED_SM_ACTIVE:
        problems.append(f"loaded: SMs only {loaded_active:.0%} active under ResNet-50 (at least {LOADED_SM_ACTIVE:.0%})")
    for series in GPM_SERIES:
        before, after = idle.get(series), loaded.get(series)
        if before is not None and after is not None and after <= before:
            problems.append(f"{series} did not rise under load: {before:.3f} idle, {after:.3f} loaded")
    return problems


ENERGY_TOLERANCE = 0.2  # the counters are sampled once a second, the power read at instants


def energy_agreement(worker_joules: float, board_joules: float, power: Sequence[tuple[float, float]]) -> tuple[float, list[str]]:
    """The energy charged to the only worker on a GPU, and that GPU's energy counter growth,
    over one window, against the board power read through it ((time, watts) pairs spanning
    the window) integrated over time: all three must agree within ENERGY_TOLERANCE. Returns
    the worker's energy over the integral, and what is wrong."""
    if len(power) < 2 or power[-1][0] <= power[0][0]:
        return math.nan, ["fewer than two power readings over the window"]
    integral = sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in itertools.pairwise(power))
    problems = []
    for what, joules in (("the worker's energy", worker_joules), ("the GPU's energy counter", board_joules)):
        if abs(joules / integral - 1) > ENERGY_TOLERANCE:
            problems.append(f"{what} grew {joules:.0f} J where power x time is {integral:.0f} J")
    return worker_joules / integral, problems
