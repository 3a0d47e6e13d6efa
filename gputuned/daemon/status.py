"""The status report: GPUs, every worker, their knobs, throughput and p99, for `gputuned status`.

`build_status` gathers it from what the daemon already holds (the store's newest samples
and each worker's snapshot), `format_status` renders it as tables for a person, and
`status_line` condenses it into systemd's one-line STATUS=. All pure over their inputs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gputuned import __version__
from gputuned.knobs import KnobSpec
from gputuned.performance import GenerativeObjectives
from gputuned.samples import Sample
from gputuned.store import SampleStore

DECISIONS_SHOWN = 10
_GPU_FIELDS = {
    "gputuned_gpu_utilization_ratio": "utilization",
    "gputuned_gpu_memory_used_bytes": "memory_used_bytes",
    "gputuned_gpu_memory_total_bytes": "memory_total_bytes",
    "gputuned_gpu_power_watts": "power_watts",
    "gputuned_gpu_temperature_celsius": "temperature_celsius",
    "gputuned_pcie_utilization_ratio": "pcie_utilization",
    "gputuned_gpu_sm_active_ratio": "sm_active",  # the whole GPU's (gpu_instance ""), where it has GPM
}


def _gpus(store: SampleStore) -> list[dict[str, Any]]:
    gpus: dict[str, dict[str, Any]] = {}
    for snapshot in store.snapshots():
        for sample in snapshot.samples:
            name = sample.spec.name
            if name == "gputuned_gpu_info":
                labels = dict(zip(sample.spec.labels, sample.labels))
                gpus.setdefault(labels["gpu"], {}).update(
                    gpu=int(labels["gpu"]), name=labels["name"], uuid=labels["uuid"], numa_node=int(labels["numa_node"])
                )
            elif name in _GPU_FIELDS and isinstance(sample, Sample) and all(label == "" for label in sample.labels[1:]):
                gpus.setdefault(sample.labels[0], {})[_GPU_FIELDS[name]] = sample.value
    return [gpus[key] for key in sorted(gpus, key=int) if "name" in gpus[key]]


@dataclass(frozen=True)
class WorkerSnapshot:
    """One worker as the daemon holds it now: never a wait on the worker."""

    name: str
    status: Any  # the supervisor's WorkerStatus
    performance: Any  # a Measurement over the recent seconds, None when unknown
    tuner: Any  # the guard's GuardView
    state_error: str | None  # why its state files cannot be written
    slo_seconds: float | None = None  # the p99 objective the tuner holds it to
    generative: GenerativeObjectives | None = None  # its TTFT and TPOT objectives, should it be an LLM worker
    objective: str = "goodput"  # what its tuner raises ([tuning] objective)


def _offnode_ratio(store: SampleStore, name: str) -> float | None:
    points = store.window("gputuned_worker_offnode_ratio", (name,))
    return points[-1][1] if points else None


def _knob_info(hello: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Each knob's title, unit, bounds, live and meaning as the worker declared them (its value is in `knobs`)."""
    if hello is None:
        return {}
    specs = (KnobSpec.from_wire(name, wire) for name, wire in hello.get("knobs", {}).items())
    return {
        spec.name: {key: value for key, value in spec.to_wire(spec.default).items() if key not in ("type", "value")}
        for spec in specs
    }


def _worker_report(store: SampleStore, worker: WorkerSnapshot, now: float) -> dict[str, Any]:
    status, performance, tuner = worker.status, worker.performance, worker.tuner
    identity = (status.hello or {}).get("worker", {})
    running = status.pid is not None and status.started_at
    placement = status.placement
    return {
        "name": worker.name,
        "state": status.state.value,
        "message": status.message,
        "pid": status.pid,
        "model": identity.get("model"),
        "kind": identity.get("kind"),
        "device": identity.get("device"),
        "restarts": status.restarts,
        "last_exit_code": status.last_exit_code,
        "uptime_seconds": now - status.started_at if running else None,
        "placement": None if placement is None else {"node": placement.node, "cpus": placement.cpulist()},
        "offnode_ratio": _offnode_ratio(store, worker.name),
        "knobs": dict(status.knobs),
        # a set sent and not yet answered (a Triton model reload takes seconds)
        "applying": dict(status.applying),
        # each knob's title, unit, bounds and meaning: from the hello, or the catalogue for a worker older than it
        "knob_info": _knob_info(status.hello),
        "performance": None
        if performance is None
        else {
            "window_seconds": performance.seconds,
            "throughput_per_second": performance.throughput,
            "goodput_per_second": performance.goodput,
            "p50_seconds": performance.p50,
            "p99_seconds": performance.p99,
            "failed": performance.failed,
            "refused": performance.refused,
            "rejected": performance.rejected,
            "generation": None if performance.generation is None else dataclasses.asdict(performance.generation),
            "tokens": None if performance.tokens is None else dataclasses.asdict(performance.tokens),
            "sm_active": performance.sm_active,
            "watts": performance.watts,
            "joules_per_request": performance.joules_per_request,
            "joules_per_token": performance.joules_per_token,
        },
        # ceilings: the highest value of a knob that fits, learned from out-of-memory events
        "tuner": {
            "mode": tuner.mode,
            "phase": tuner.phase,
            "trial_active": tuner.trial_active,
            "frozen_knobs": tuner.frozen_knobs,
            "ceilings": tuner.ceilings,
            "objective": worker.objective,
            "slo_p99_seconds": worker.slo_seconds,
            "slo_ttft_seconds": None if worker.generative is None else worker.generative.ttft,
            "slo_tpot_seconds": None if worker.generative is None else worker.generative.tpot,
        },
        "note": identity.get("note"),
        "decisions": [decision.to_json() for decision in tuner.decisions[-DECISIONS_SHOWN:]],
        "state_error": worker.state_error,
    }


def build_status(
    store: SampleStore, workers: Sequence[WorkerSnapshot], now: float, started_at: float, metrics_url: str
) -> dict[str, Any]:
    """The report: the daemon, the GPUs, the collectors' health and every worker. `now` and
    `started_at` (the daemon's start) are monotonic seconds, like the workers' times."""
    return {
        "daemon": {"version": __version__, "uptime_seconds": now - started_at, "metrics": metrics_url},
        "gpus": _gpus(store),
        "collectors": {s.collector: s.success for s in store.snapshots()},
        "workers": [_worker_report(store, worker, now) for worker in workers],
    }


def choose_worker(names: Sequence[str], name: str | None) -> int:
    """The index of the worker named, or of the only one; LookupError saying which exist.
    Shared by the daemon (set, tune) and by readers of its status report."""
    if not names:
        raise LookupError("this daemon runs without a worker (--no-worker)")
    if name is None and len(names) == 1:
        return 0
    if name is None:
        raise LookupError(f"this daemon runs several workers; name one with --worker: {', '.join(names)}")
    if name not in names:
        raise LookupError(f"no worker named {name!r}; workers: {', '.join(names)}")
    return list(names).index(name)


def worker_entry(report: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """One worker of a report: the one named, or the only one; KeyError saying which exist."""
    workers = report["workers"]
    try:
        return workers[choose_worker([entry["name"] for entry in workers], name)]
    except LookupError as exc:
        raise KeyError(str(exc)) from None


def status_line(workers: Sequence[WorkerSnapshot]) -> str:
    """One line for systemd's STATUS=: each worker's state, throughput, p99 and knobs."""
    if not workers:
        return "monitoring (no worker)"
    parts = []
    for worker in workers:
        words = [f"{worker.name} {worker.status.state.value}"]
        if worker.performance is not None:
            p99 = worker.performance.p99
            words.append(f"{worker.performance.throughput:.1f} req/s, p99 {'-' if p99 is None else f'{p99 * 1000:.1f} ms'}")
        if worker.status.knobs:
            words.append(" ".join(f"{k}={v}" for k, v in sorted(worker.status.knobs.items())))
        if worker.state_error:
            words.append("state not saved, kept in memory")
        parts.append(", ".join(words))
    return "; ".join(parts)


def _fmt(value: Any, unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value * scale:.{digits}f}{unit}"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(headers, widths)).rstrip()]
    lines += ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return lines


def duration(seconds: float | None) -> str:
    """Seconds as people read an uptime: 45s, 12m 05s, 3h 20m, 2d 04h."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _performance_line(performance: dict[str, Any], tuner: dict[str, Any]) -> str:
    generation = performance.get("generation")
    if generation is not None:
        return _generation_line(performance, generation, tuner)
    slo_seconds = tuner.get("slo_p99_seconds")
    objective = f" (SLO {_fmt(slo_seconds, ' ms', 1000, 0)})" if slo_seconds is not None else ""
    return (
        f"throughput {performance['throughput_per_second']:.1f} req/s, goodput {performance['goodput_per_second']:.1f}/s, "
        f"p50 {_fmt(performance['p50_seconds'], ' ms', 1000)}, p99 {_fmt(performance['p99_seconds'], ' ms', 1000)}{objective}, "
        f"{performance['failed']} failed, {performance['refused']} refused, {performance['rejected']} rejected "
        f"(last {performance['window_seconds']:.0f} s)" + _tokens_text(performance.get("tokens"))
    )


def _tokens_text(tokens: dict[str, Any] | None) -> str:
    """A variable-length model's tokens: served per second, and the padding computed with them."""
    if tokens is None:
        return ""
    return (
        f"\n  {tokens['per_second']:.0f} tokens/s, {tokens['batch_tokens']:.0f} per batch, padding {tokens['padding_share']:.0%}"
    )


def _generation_line(performance: dict[str, Any], generation: dict[str, Any], tuner: dict[str, Any]) -> str:
    """An LLM worker: requests and goodput, tokens, TTFT and TPOT against their objectives, its KV cache."""

    def ms(seconds: float | None) -> str:
        return _fmt(seconds, " ms", 1000)

    ttft, tpot = tuner.get("slo_ttft_seconds"), tuner.get("slo_tpot_seconds")
    return (
        f"throughput {performance['throughput_per_second']:.2f} req/s, goodput {performance['goodput_per_second']:.2f}/s "
        f"within TTFT {_fmt(ttft, ' ms', 1000, 0)} and TPOT {_fmt(tpot, ' ms', 1000, 0)}, "
        f"{generation['output_tokens_per_second']:.0f} tokens/s out\n"
        f"  TTFT p50 {ms(generation['ttft_p50'])}, p99 {ms(generation['ttft_p99'])}; "
        f"TPOT p50 {ms(generation['tpot_p50'])}, p99 {ms(generation['tpot_p99'])}; "
        f"{generation['running']:.0f} running, {generation['waiting']:.0f} waiting, KV cache {generation['kv_cache_usage']:.0%}, "
        f"{generation['preemptions']} preempted\n"
        f"  {performance['failed']} failed, {performance['refused']} refused, {performance['rejected']} rejected, "
        f"{generation['aborted']} aborted (last {performance['window_seconds']:.0f} s)"
    )


def _worker_lines(w: dict[str, Any]) -> list[str]:
    """One worker's paragraph: its tuner, what is wrong or going on, how it performs."""
    lines = [
        f"{w['name']}: tuner {w['tuner']['mode']} ({w['tuner']['phase']})"
        + (f", frozen by hand: {', '.join(w['tuner']['frozen_knobs'])}" if w["tuner"]["frozen_knobs"] else "")
    ]
    if w["state"] != "ready":
        lines.append(f"  {w['message']}")
    if w.get("note"):
        lines.append(f"  {w['note']}")
    if w.get("applying"):
        lines.append(f"  applying {' '.join(f'{k}={v}' for k, v in sorted(w['applying'].items()))}")
    if w["state_error"]:
        lines.append(f"  state not saved ({w['state_error']}): tuned knobs and decisions are kept in memory only")
    if w["performance"] is not None:
        lines.append(f"  {_performance_line(w['performance'], w['tuner'])}")
        energy = energy_line(w["performance"], w["tuner"])
        if energy:
            lines.append(f"  {energy}")
    return lines


def energy_line(performance: dict[str, Any], tuner: dict[str, Any]) -> str:
    """What the worker's GPU did for it: SM activity, the power attributed to it, the energy per
    request (and per token), and the objective its tuner raises; "" where nothing is known."""
    parts = []
    if performance.get("sm_active") is not None:
        parts.append(f"SMs {performance['sm_active']:.0%} active")
    if performance.get("watts") is not None:
        parts.append(f"{performance['watts']:.0f} W attributed")
    if performance.get("joules_per_request") is not None:
        parts.append(f"{performance['joules_per_request']:.3g} J/request")
    if performance.get("joules_per_token") is not None:
        parts.append(f"{performance['joules_per_token']:.3g} J/token")
    if not parts:
        return ""
    return "GPU: " + ", ".join(parts) + f" (tuning for {tuner.get('objective', 'goodput').replace('_', ' ')})"


def format_status(report: dict[str, Any]) -> str:
    daemon = report["daemon"]
    lines = [f"gputuned {daemon['version']}, up {duration(daemon['uptime_seconds'])}, metrics at {daemon['metrics']}"]
    failing = [name for name, ok in report["collectors"].items() if not ok]
    if failing:
        lines.append(f"collectors failing: {', '.join(failing)} (see the log and gputuned_collector_success)")
    lines.append("")
    if report["gpus"]:
        rows = [
            [
                str(g["gpu"]),
                g["name"],
                _fmt(g.get("utilization"), "%", 100, 0),
                f"{_fmt(g.get('memory_used_bytes'), '', 2**-30)}/{_fmt(g.get('memory_total_bytes'), ' GiB', 2**-30)}",
                _fmt(g.get("power_watts"), " W", digits=0),
                _fmt(g.get("temperature_celsius"), " C", digits=0),
                _fmt(g.get("sm_active"), "%", 100, 0),
                _fmt(g.get("pcie_utilization"), "%", 100, 0),
                str(g["numa_node"]),
            ]
            for g in report["gpus"]
        ]
        lines += _table(["GPU", "NAME", "UTIL", "MEMORY", "POWER", "TEMP", "SM", "PCIE", "NUMA"], rows)
    else:
        lines.append("GPUs: none visible through NVML")
    lines.append("")
    workers = report["workers"]
    if not workers:
        lines.append("workers: none supervised (the config names none, or --no-worker): monitoring only")
        return "\n".join(lines)
    rows = []
    for w in workers:
        placement = w["placement"]
        where = f"node {placement['node']} (CPUs {placement['cpus']})" if placement else "not placed"
        rows.append(
            [
                w["name"],
                w["state"],
                str(w["pid"] or "-"),
                w["model"] or "-",
                w["device"] or "-",
                duration(w["uptime_seconds"]),
                str(w["restarts"]),
                where,
                _fmt(w["offnode_ratio"], "%", 100, 1),
                w["tuner"]["mode"],
            ]
        )
    lines += _table(["WORKER", "STATE", "PID", "MODEL", "DEVICE", "UPTIME", "RESTARTS", "PLACEMENT", "OFF-NODE", "TUNER"], rows)
    for w in workers:
        lines += ["", *_worker_lines(w)]
    knob_names = sorted({name for w in workers for name in w["knobs"]})
    if knob_names:
        lines.append("")
        lines += _table(
            ["KNOB", *(w["name"].upper() for w in workers)],
            [[name, *(str(w["knobs"].get(name, "-")) for w in workers)] for name in knob_names],
        )
    decisions = sorted((d | {"worker": w["name"]} for w in workers for d in w["decisions"]), key=lambda d: d["t"])
    lines.append("")
    lines.append("decisions: none yet" if not decisions else "last decisions:")
    for d in decisions[-DECISIONS_SHOWN:]:
        when = time.strftime("%H:%M:%S", time.localtime(d["t"]))
        change = f"{d['old']} -> {d['new']}" if d["new"] is not None else ""
        by = f" [{d['tuner']}]" if d.get("tuner") else ""
        lines.append(f"  {when} {d['worker']} {d['action']:<9} {d['knob']} {change}{by}: {d['reason']}")
    return "\n".join(lines)
