"""Reads the generated dashboards back: every PromQL query in them, and the metric names used."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from gputuned.catalog import METRIC_SPECS
from gputuned.collectors import tuner, worker
from gputuned.knobs import CATALOGUE, LENGTH_BUCKET, MAX_BATCH_TOKENS
from gputuned.testing.processes import prometheus_query

DASHBOARD_DIR = Path(__file__).parent.parent / "dashboards"
METRIC_NAME = re.compile(r"\bgputuned_[a-z0-9_]+")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
LABEL_VALUES = re.compile(r"label_values\((?P<selector>.+), (?P<label>\w+)\)")
VLLM_KNOBS = {knob.name for knob in CATALOGUE.values() if set(knob.kinds) == {"vllm"}}
VARIABLE_LENGTH_KNOBS = {LENGTH_BUCKET.name, MAX_BATCH_TOKENS.name}
# What only a worker serving a variable-length model exports (every one a counter or a gauge).
VARIABLE_LENGTH_NAMES = {spec.name for spec in (*worker.TOKEN_SPECS, *tuner.TOKEN_SPECS)}
# What only an LLM worker exports (as Prometheus stores it: a histogram by its _count).
GENERATIVE_NAMES = {
    f"{spec.name}_count" if spec.kind == "histogram" else spec.name
    for spec in (*worker.GENERATIVE_SPECS, *tuner.GENERATIVE_SPECS)
}


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


def generative(expr: str) -> bool:
    """Whether a query reads what only an LLM worker exports: its families, or its scheduler's knobs."""
    names = {spec.name for spec in (*worker.GENERATIVE_SPECS, *tuner.GENERATIVE_SPECS)}
    families = any(name.removesuffix(suffix) in names for name in METRIC_NAME.findall(expr) for suffix in (*HISTOGRAM_SERIES, ""))
    return families or any(f'knob="{knob}"' in expr for knob in VLLM_KNOBS)


def variable_length(expr: str) -> bool:
    """Whether a query reads what only a worker serving a variable-length model exports: its
    token families, or its token budget and bucket width."""
    families = any(name in VARIABLE_LENGTH_NAMES for name in METRIC_NAME.findall(expr))
    return families or any(f'knob="{knob}"' in expr for knob in VARIABLE_LENGTH_KNOBS)


def substitute(expr: str, instance: str) -> str:
    """What Grafana sends for one instance, every GPU, a 1 s scrape interval and a short range."""
    for variable, value in (
        ("$__rate_interval", "10s"),
        ("$__interval", "30s"),
        ("$instance", instance),
        ("$gpu", ".*"),
        ("$worker", ".*"),
    ):
        expr = expr.replace(variable, value)
    return expr


def returns_series(prometheus: str, expr: str) -> bool:
    variable = LABEL_VALUES.fullmatch(expr)
    if variable:
        series = prometheus_query(prometheus, variable["selector"])
        return any(variable["label"] in s["metric"] for s in series)
    return bool(prometheus_query(prometheus, expr))
