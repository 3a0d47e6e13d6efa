"""Reads the generated dashboards back: every PromQL query in them, and the metric names used."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from gputuned.catalog import METRIC_SPECS

DASHBOARD_DIR = Path(__file__).parent.parent / "dashboards"
METRIC_NAME = re.compile(r"\bgputuned_[a-z0-9_]+")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def load_dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation and variable query."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} query {target['refId']}", target["expr"]
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']!r}", variable["query"]


def unknown_metrics(expr: str) -> set[str]:
    """Metric names in `expr` that the exporter does not serve (histograms as their three series)."""
    served = set()
    for spec in METRIC_SPECS:
        served |= {spec.name + suffix for suffix in HISTOGRAM_SERIES} if spec.kind == "histogram" else {spec.name}
    return set(METRIC_NAME.findall(expr)) - served
