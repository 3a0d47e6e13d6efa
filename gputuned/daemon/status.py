"""The status report: GPUs, the worker, its knobs, throughput and p99, for `gputuned status`.

`build_status` gathers it from what the daemon already holds (the store's newest samples
and the supervisor's view), `format_status` renders it as tables for a person, and
`status_line` condenses it into systemd's one-line STATUS=. All pure over their inputs.
"""

from __future__ import annotations

import time
from typing import Any

from gputuned import __version__
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
            elif name in _GPU_FIELDS and isinstance(sample, Sample):
                gpus.setdefault(sample.labels[0], {})[_GPU_FIELDS[name]] = sample.value
    return [gpus[key] for key in sorted(gpus, key=int) if "name" in gpus[key]]


def _offnode_ratio(store: SampleStore) -> float | None:
    points = store.window("gputuned_worker_offnode_ratio")
    return points[-1][1] if points else None


def build_status(
    store: SampleStore,
    worker: Any,
    performance: Any,
    now: float,
    started_at: float,
    metrics_url: str,
    tuner: Any = None,
    state_error: str | None = None,
) -> dict[str, Any]:
    """`worker` is the supervisor's WorkerStatus (None without a worker), `performance` a
    Measurement of it over the recent seconds (None when unknown), `tuner` the guard's
    GuardView, `state_error` why the state directory cannot be written; `now` and
    `started_at` (the daemon's start) are monotonic seconds, like the worker's times."""
    report: dict[str, Any] = {
        "daemon": {
            "version": __version__,
            "uptime_seconds": now - started_at,
            "metrics": metrics_url,
            "state_error": state_error,
        },
        "gpus": _gpus(store),
        "collectors": {s.collector: s.success for s in store.snapshots()},
        "worker": None,
        "knobs": {},
        "performance": None,
        "tuner": None,
        "decisions": [],
    }
    if tuner is not None:
        report["tuner"] = {"mode": tuner.mode, "phase": tuner.phase, "frozen_knobs": tuner.frozen_knobs}
        report["decisions"] = [decision.to_json() for decision in tuner.decisions[-DECISIONS_SHOWN:]]
    if worker is not None:
        identity = (worker.hello or {}).get("worker", {})
        report["worker"] = {
            "state": worker.state.value,
            "message": worker.message,
            "pid": worker.pid,
            "model": identity.get("model"),
            "device": identity.get("device"),
            "restarts": worker.restarts,
            "last_exit_code": worker.last_exit_code,
            "uptime_seconds": now - worker.started_at if worker.pid is not None and worker.started_at else None,
            "placement": None
            if worker.placement is None
            else {"node": worker.placement.node, "cpus": worker.placement.cpulist()},
            "offnode_ratio": _offnode_ratio(store),
        }
        report["knobs"] = dict(worker.knobs)
    if performance is not None:
        report["performance"] = {
            "window_seconds": performance.seconds,
            "throughput_per_second": performance.throughput,
            "p50_seconds": performance.p50,
            "p99_seconds": performance.p99,
            "failed": performance.failed,
            "refused": performance.refused,
            "rejected": performance.rejected,
        }
    return report


def status_line(worker: Any, performance: Any, state_error: str | None) -> str:
    """One line for systemd's STATUS=: worker state, throughput, p99, knobs."""
    if worker is None:
        return "monitoring (no worker)"
    parts = [f"worker {worker.state.value}"]
    if performance is not None:
        p99 = f"{performance.p99 * 1000:.1f} ms" if performance.p99 is not None else "-"
        parts.append(f"{performance.throughput:.1f} req/s, p99 {p99}")
    if worker.knobs:
        parts.append(" ".join(f"{k}={v}" for k, v in sorted(worker.knobs.items())))
    if state_error:
        parts.append("state not saved, kept in memory")
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


def format_status(report: dict[str, Any]) -> str:
    daemon = report["daemon"]
    lines = [f"gputuned {daemon['version']}, up {_fmt(daemon['uptime_seconds'], ' s', digits=0)}, metrics at {daemon['metrics']}"]
    if daemon.get("state_error"):
        lines.append(f"state not saved ({daemon['state_error']}): tuned knobs and decisions are kept in memory only")
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
                _fmt(g.get("pcie_utilization"), "%", 100, 0),
                str(g["numa_node"]),
            ]
            for g in report["gpus"]
        ]
        lines += _table(["GPU", "NAME", "UTIL", "MEMORY", "POWER", "TEMP", "PCIE", "NUMA"], rows)
    else:
        lines.append("GPUs: none visible through NVML")
    lines.append("")
    worker = report["worker"]
    if worker is None:
        lines.append("worker: not supervised (--no-worker)")
    else:
        placement = worker["placement"]
        where = f"NUMA node {placement['node']} (CPUs {placement['cpus']})" if placement else "not placed"
        lines += _table(
            ["WORKER", "STATE", "PID", "MODEL", "DEVICE", "UPTIME", "RESTARTS", "PLACEMENT", "OFF-NODE"],
            [
                [
                    "worker",
                    worker["state"],
                    str(worker["pid"] or "-"),
                    worker["model"] or "-",
                    worker["device"] or "-",
                    _fmt(worker["uptime_seconds"], " s", digits=0),
                    str(worker["restarts"]),
                    where,
                    _fmt(worker["offnode_ratio"], "%", 100, 1),
                ]
            ],
        )
        if worker["state"] != "ready":
            lines.append(f"  {worker['message']}")
        lines.append("")
        performance = report["performance"]
        if performance is not None:
            lines.append(
                f"throughput {performance['throughput_per_second']:.1f} req/s, p50 {_fmt(performance['p50_seconds'], ' ms', 1000)}, "
                f"p99 {_fmt(performance['p99_seconds'], ' ms', 1000)}, {performance['failed']} failed, "
                f"{performance.get('refused', 0)} refused, {performance.get('rejected', 0)} rejected "
                f"(last {performance['window_seconds']:.0f} s)"
            )
        if report["knobs"]:
            lines += _table(["KNOB", "VALUE"], [[name, str(value)] for name, value in sorted(report["knobs"].items())])
    lines.append("")
    tuner = report.get("tuner")
    if tuner is not None:
        frozen = f", frozen by hand: {', '.join(tuner['frozen_knobs'])}" if tuner["frozen_knobs"] else ""
        lines.append(f"tuner: {tuner['mode']} ({tuner['phase']}){frozen}")
    decisions = report["decisions"]
    lines.append("decisions: none yet" if not decisions else "last decisions:")
    for d in decisions:
        when = time.strftime("%H:%M:%S", time.localtime(d["t"]))
        change = f"{d['old']} -> {d['new']}" if d["new"] is not None else ""
        lines.append(f"  {when} {d['action']:<9} {d['knob']} {change}: {d['reason']}")
    return "\n".join(lines)
