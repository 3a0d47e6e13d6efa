"""Reference documents generated from the code, so that they cannot drift from it.

`docs/knobs.md` is written from the knob catalogue (`gputuned.knobs.CATALOGUE`); a test
checks that the committed file equals what this writes. After changing the catalogue:

    python -m gputuned.reference docs
"""

from __future__ import annotations

import sys
from pathlib import Path

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


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "knobs.md"
    path.write_text(knobs_markdown(), encoding="utf-8")
    return [path]


if __name__ == "__main__":
    for written in write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(f"wrote {written}")
