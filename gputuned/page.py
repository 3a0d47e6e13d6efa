"""SHOW: the landing page at `/` of the metrics port, as node_exporter has one (pure).

A person opening the daemon's port in a browser sees each worker with its state, knobs,
goodput and p99 against its SLO over the last minutes (a small inline SVG plot), and the
last decisions with their reasons, with a link to /metrics. It is one self-contained HTML
document (no scripts, no external assets: it works offline and on a locked-down host) that
reloads itself every few seconds. Built from the status report and each worker's recent
windows, which the daemon already holds: rendering never waits on a worker.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from typing import Any

from gputuned.daemon.status import energy_line

REFRESH_SECONDS = 2
PLOT_WIDTH, PLOT_HEIGHT = 360, 90

# (seconds before now, goodput per second, p99 seconds or None), oldest first.
Point = tuple[float, float, float | None]

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: .4em 0 1em; }
th, td { padding: .15em .8em .15em 0; text-align: left; }
th { border-bottom: 1px solid #999; }
section { border: 1px solid #ccc; border-radius: 4px; padding: .5em 1em; margin: 0 0 1em; }
.ready { color: #1a7f37; } .state { font-weight: bold; }
.muted { color: #666; } svg { background: #fafafa; border: 1px solid #ddd; }
"""


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _polyline(points: list[tuple[float, float]], span: float, top: float, colour: str, dashed: bool = False) -> str:
    if not points:
        return ""
    coords = " ".join(
        f"{PLOT_WIDTH * (1 - ago / span):.1f},{PLOT_HEIGHT * (1 - min(value / top, 1.0)):.1f}" for ago, value in points
    )
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5"{dash} points="{coords}"/>'


def plot(series: Sequence[Point], slo_seconds: float, span: float) -> str:
    """Goodput (green, scaled to its own peak) and p99 (blue) against the SLO (red dashes, at
    mid-height: p99 above the line breaks it) over the last `span` seconds."""
    goodput = [(ago, value) for ago, value, _ in series]
    peak = max((value for _, value in goodput), default=0.0) or 1.0
    p99 = [(ago, value) for ago, _, value in series if value is not None]
    slo = [(span, slo_seconds), (0.0, slo_seconds)]
    label = f"goodput (peak {peak:.0f}/s) and p99 against the {slo_seconds * 1000:g} ms SLO, last {span / 60:g} min"
    return (
        f'<svg role="img" aria-label="{_e(label)}" width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" '
        f'viewBox="0 0 {PLOT_WIDTH} {PLOT_HEIGHT}"><title>{_e(label)}</title>'
        + _polyline(goodput, span, peak, "#1a7f37")
        + _polyline(slo, span, 2 * slo_seconds, "#cf222e", dashed=True)
        + _polyline(p99, span, 2 * slo_seconds, "#0969da")
        + "</svg>"
    )


def _generation(performance: dict[str, Any], tuner: dict[str, Any]) -> str:
    """An LLM worker's line: goodput within both objectives, tokens, TTFT and TPOT, its KV cache."""
    generation = performance["generation"]

    def ms(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds * 1000:.0f} ms"

    return (
        f"<p>goodput <b>{performance['goodput_per_second']:.2f}/s</b> within TTFT {ms(tuner.get('slo_ttft_seconds'))} and "
        f"TPOT {ms(tuner.get('slo_tpot_seconds'))}, {generation['output_tokens_per_second']:.0f} tokens/s; "
        f"TTFT p99 <b>{ms(generation['ttft_p99'])}</b>, TPOT p99 <b>{ms(generation['tpot_p99'])}</b>; "
        f"{generation['running']:.0f} running, KV cache {generation['kv_cache_usage']:.0%}, "
        f"{generation['preemptions']} preempted; last {performance['window_seconds']:.0f} s</p>"
    )


def _worker(entry: dict[str, Any], series: Sequence[Point], slo_seconds: float, span: float) -> str:
    state_class = "state ready" if entry["state"] == "ready" else "state"
    parts = [
        f'<section id="worker-{_e(entry["name"])}"><h3>{_e(entry["name"])} '
        f'<span class="{state_class}">{_e(entry["state"])}</span></h3>',
        f'<p class="muted">pid {_e(entry["pid"])}, {_e(entry["model"])} on {_e(entry["device"])}, '
        f"{_e(entry['restarts'])} restarts; tuner {_e(entry['tuner']['mode'])} ({_e(entry['tuner']['phase'])})</p>",
    ]
    if entry["state"] != "ready":
        parts.append(f"<p>{_e(entry['message'])}</p>")
    if entry.get("note"):
        parts.append(f"<p>{_e(entry['note'])}</p>")
    performance = entry["performance"]
    if performance is not None and performance.get("generation") is not None:
        parts.append(_generation(performance, entry["tuner"]))
    elif performance is not None:
        p99 = performance["p99_seconds"]
        parts.append(
            f"<p>goodput <b>{performance['goodput_per_second']:.1f}/s</b>, throughput "
            f"{performance['throughput_per_second']:.1f}/s, p99 <b>{'-' if p99 is None else f'{p99 * 1000:.1f} ms'}</b> "
            f"(SLO {slo_seconds * 1000:g} ms), last {performance['window_seconds']:.0f} s</p>"
        )
        tokens = performance.get("tokens")
        if tokens is not None:
            parts.append(
                f"<p>{tokens['per_second']:.0f} tokens/s, {tokens['batch_tokens']:.0f} tokens per batch, "
                f"padding <b>{tokens['padding_share']:.0%}</b> of the tokens computed</p>"
            )
    energy = energy_line(performance, entry["tuner"]) if performance is not None else ""
    if energy:
        parts.append(f"<p>{_e(energy)}</p>")
    parts.append(plot(series, slo_seconds, span))
    parts.append(
        f'<p class="muted"><span style="color:#1a7f37">goodput</span>, <span style="color:#0969da">p99</span> and '
        f'<span style="color:#cf222e">the SLO</span> over the last {span / 60:g} minutes</p>'
    )
    info = entry.get("knob_info", {})
    parts.append(
        _table(
            ["knob", "value", "unit", "range", "what it does"],
            [
                [
                    name,
                    str(value),
                    info.get(name, {}).get("unit", ""),
                    f"{info[name]['min']}..{info[name]['max']}" if name in info else "",
                    info.get(name, {}).get("description", ""),
                ]
                for name, value in sorted(entry["knobs"].items())
            ],
        )
    )
    decisions = entry["decisions"][-5:]
    if decisions:
        rows = [
            [
                time.strftime("%H:%M:%S", time.localtime(d["t"])),
                d["action"],
                d["knob"],
                "" if d["new"] is None else f"{d['old']} -> {d['new']}",
                d.get("tuner") or "",
                d["reason"],
            ]
            for d in reversed(decisions)
        ]
        parts.append(_table(["time", "action", "knob", "change", "tuner", "why"], rows))
    parts.append("</section>")
    return "".join(parts)


def render(
    report: dict[str, Any], series: Mapping[str, Sequence[Point]], slos: Mapping[str, float], span: float, host: str
) -> str:
    """The page for a status report (see daemon/status.py), each worker's recent `series` and its SLO."""
    daemon = report["daemon"]
    gpus = [
        [g["gpu"], g["name"], None if g.get("utilization") is None else f"{g['utilization'] * 100:.0f}%", g["numa_node"]]
        for g in report["gpus"]
    ]
    workers = "".join(_worker(entry, series.get(entry["name"], ()), slos[entry["name"]], span) for entry in report["workers"])
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        f"<title>gputuned on {_e(host)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>gputuned</h1><p>version {_e(daemon['version'])} on {_e(host)}, up {daemon['uptime_seconds']:.0f} s. "
        '<a href="/metrics">Metrics</a></p>'
        + (
            f"<h2>GPUs</h2>{_table(['GPU', 'name', 'utilisation', 'NUMA node'], gpus)}"
            if gpus
            else "<p>No GPU visible through NVML.</p>"
        )
        + f"<h2>Workers</h2>{workers or '<p>No worker supervised (--no-worker).</p>'}"
        + "</body></html>"
    )
