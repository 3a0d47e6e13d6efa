"""Reference documents generated from the code, so that they cannot drift from it.

`docs/knobs.md` is written from the knob catalogue (`gputuned.knobs.CATALOGUE`),
`docs/configuration.md` from the config's dataclasses (each key's documentation, range and
choices are its field's metadata) and `docs/metrics.md` from the metric catalogue
(`gputuned.catalog.METRIC_GROUPS`). A test checks that the committed files equal what this
writes. After changing any of them:

    python -m gputuned.reference docs
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, get_type_hints

from gputuned.catalog import METRIC_GROUPS
from gputuned.config import ON_RELOAD, Config, WorkerConfig
from gputuned.knobs import CATALOGUE, KnobDef

KINDS = {"builtin": "`gputuned worker`", "triton": "Triton"}


def _bounds(knob: KnobDef) -> str:
    upper = "the machine's" if knob.maximum is None else f"{knob.maximum:,}"
    return f"{knob.minimum:,} .. {upper}"


def knobs_markdown() -> str:
    lines = [
        "# Knobs",
        "",
        "Every setting gputuned can tune, declared once in `gputuned/knobs.py`; this page is",
        "generated from that declaration (`python -m gputuned.reference docs`).",
        "",
        "A worker offers the knobs of its kind in its hello, with bounds that may be narrower",
        "than these (Triton's batch stops at 128; the pool at half the free memory). `gputuned",
        "status --json` lists what each worker offers under `knob_info`. Live knobs change",
        "while the worker serves, at its next batch; restart-only knobs change only when the",
        "worker is restarted with a new value, and the online loop never moves them. A server",
        "embedding the agent may declare knobs of its own, which are shown and tuned the same way.",
        "",
        "| knob | title | unit | bounds | applies | what it does |",
        "|---|---|---|---|---|---|",
    ]
    for knob in CATALOGUE.values():
        applies = "live" if knob.live else "at restart"
        lines.append(f"| `{knob.name}` | {knob.title} | {knob.unit} | {_bounds(knob)} | {applies} | {knob.description} |")
    for kind, title in KINDS.items():
        lines += ["", f"## In {title}", "", "| knob | what it is there |", "|---|---|"]
        lines += [f"| `{knob.name}` | {knob.kinds[kind]} |" for knob in CATALOGUE.values() if kind in knob.kinds]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, list):
        return "`[]`"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def _accepts(meta: dict[str, Any]) -> str:
    if meta.get("choices"):
        return ", ".join(f'`"{choice}"`' if choice else '`""`' for choice in meta["choices"])
    low, high = meta.get("min"), meta.get("max")
    return "" if low is None and high is None else f"{low:g} .. {high:g}"


def _section_table(cls: Any) -> list[str]:
    hints = get_type_hints(cls)
    lines = ["| key | type | default | accepts | what it does |", "|---|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        meta = dict(field.metadata)
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        kind = hints[field.name].__name__
        lines.append(f"| `{field.name}` | {kind} | {_toml(default)} | {_accepts(meta)} | {meta['doc']} |")
    return lines


WORKER_SECTIONS = ("worker", "workers", "workers_per_gpu")


def _summary(cls: Any) -> str:
    """The first paragraph of a section's docstring, on one line."""
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def configuration_markdown() -> str:
    lines = [
        "# Configuration",
        "",
        "Every key of `/etc/gputuned/gputuned.toml` (or the file `--config` names), generated",
        "from the config's own declaration in `gputuned/config.py` (`python -m gputuned.reference",
        "docs`). A key the file does not set takes its default; an unknown key or a value out of",
        "range is an error naming the key and what it accepts (`gputuned check-config` says so",
        "before a restart). A file without any worker section monitors only and changes nothing.",
        "",
        "`systemctl reload gputuned` (SIGHUP) reads the file again. An invalid file is refused",
        "whole, and the running configuration is kept. What a valid one changes takes effect as",
        "each section says below.",
    ]
    hints = get_type_hints(Config)
    for field in dataclasses.fields(Config):
        if field.name in WORKER_SECTIONS:
            continue
        cls = hints[field.name]
        lines += ["", f"## [{field.name}]", "", _summary(cls), ""]
        lines += [f"On reload: {ON_RELOAD[field.name]}.", ""]
        lines += _section_table(cls)
    lines += [
        "",
        "## The workers: [worker], [[workers]] or [workers_per_gpu]",
        "",
        "One of the three: `[worker]` for one worker named `worker`; `[[workers]]`, repeated, for",
        "several, each with its own `name`; `[workers_per_gpu]` for one per visible GPU (named",
        "`gpuN` on `cuda:N`, so it sets neither `name` nor `device`). Each takes the keys below.",
        "",
        _summary(WorkerConfig),
        "",
        f"On reload: {ON_RELOAD['worker']}.",
        "",
        *_section_table(WorkerConfig),
    ]
    return "\n".join(lines) + "\n"


def metrics_markdown() -> str:
    lines = [
        "# Metrics",
        "",
        "Every metric family gputuned exports, generated from the declarations the exporter serves",
        "(`gputuned/catalog.py`; `python -m gputuned.reference docs`). Names follow Prometheus's",
        "conventions: base units, `_total` counters, `_ratio` in 0..1. Per-GPU series carry `gpu`,",
        "per-worker series carry `worker`. `promtool check metrics` reports nothing on the real output.",
        "The daemon's own `process_*` and `python_*` metrics are exported too.",
    ]
    for source, specs in METRIC_GROUPS:
        lines += ["", f"## From {source}", "", "| metric | type | labels | meaning |", "|---|---|---|---|"]
        lines += [f"| `{spec.name}` | {spec.kind} | {', '.join(spec.labels)} | {spec.help} |" for spec in specs]
    return "\n".join(lines) + "\n"


GENERATED = {"knobs.md": knobs_markdown, "configuration.md": configuration_markdown, "metrics.md": metrics_markdown}


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, generate in GENERATED.items():
        path = directory / name
        path.write_text(generate(), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written in write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(f"wrote {written}")
