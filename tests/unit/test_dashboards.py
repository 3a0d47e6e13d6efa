"""The committed dashboards are what `gputuned dashboards build` writes, and they are well formed."""

from __future__ import annotations

import itertools
import re

import pytest
import yaml

from gputuned.cli import main
from gputuned.dashboards.build import generated_files
from gputuned.dashboards.provisioning import DASHBOARD_DIR as PROVISIONED_DIR
from tests.dashboard_queries import DASHBOARD_DIR, load_dashboards, panels, queries, unknown_metrics

DASHBOARDS = load_dashboards()


def test_committed_files_equal_a_fresh_build(tmp_path):
    assert main(["dashboards", "build", "--out", str(tmp_path)]) == 0
    built = {str(path.relative_to(tmp_path)): path.read_text() for path in tmp_path.rglob("*") if path.is_file()}
    committed = {str(path.relative_to(DASHBOARD_DIR)): path.read_text() for path in DASHBOARD_DIR.rglob("*") if path.is_file()}
    assert built == generated_files()
    assert sorted(committed) == sorted(built), "run `gputuned dashboards build` and commit dashboards/"
    stale = [name for name in built if committed[name] != built[name]]
    assert stale == [], "run `gputuned dashboards build` and commit dashboards/"


def test_three_dashboards_with_their_variables_and_links():
    assert sorted(DASHBOARDS) == ["gputuned-fleet.json", "gputuned-host.json", "gputuned-tuning.json"]
    for dashboard in DASHBOARDS.values():
        assert dashboard["schemaVersion"] == 42
        assert dashboard["uid"] and dashboard["description"]
        variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
        assert sorted(variables) == ["datasource", "gpu", "instance", "worker"]
        assert variables["datasource"]["query"] == "prometheus"
        assert "gputuned_worker_info" in str(variables["worker"]["query"])
        assert [link["type"] for link in dashboard["links"]] == ["dashboards"]
        assert dashboard["links"][0]["tags"] == dashboard["tags"] == ["gputuned"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panel_ids_are_unique_and_panels_do_not_overlap(name):
    every = list(panels(DASHBOARDS[name]))
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids)) and 0 not in ids
    for panel in every:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
    for a, b in itertools.combinations(every, 2):
        ga, gb = a["gridPos"], b["gridPos"]
        apart = (
            ga["x"] + ga["w"] <= gb["x"]
            or gb["x"] + gb["w"] <= ga["x"]
            or ga["y"] + ga["h"] <= gb["y"]
            or gb["y"] + gb["h"] <= ga["y"]
        )
        assert apart, f"{a['title']!r} overlaps {b['title']!r}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_has_a_query_a_description_and_a_unit(name):
    for panel in panels(DASHBOARDS[name]):
        if panel["type"] == "row":
            continue
        assert panel["targets"] and all(target["expr"] for target in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("description"), panel["title"]
        if panel["type"] == "timeseries":
            assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        if panel["type"] == "table":
            units = [
                prop for override in panel["fieldConfig"]["overrides"] for prop in override["properties"] if prop["id"] == "unit"
            ]
            assert len(units) == len(panel["targets"]), panel["title"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_metric_in_a_query_is_served_by_the_exporter(name):
    found = {where: unknown_metrics(expr) for where, expr in queries(DASHBOARDS[name])}
    assert found and {where: names for where, names in found.items() if names} == {}


def test_unknown_metric_names_are_caught():
    assert unknown_metrics("rate(gputuned_gpu_utilisation_ratio[5m])") == {"gputuned_gpu_utilisation_ratio"}
    assert unknown_metrics("gputuned_worker_latency_seconds_bucket + gputuned_worker_latency_seconds_count") == set()


def test_provisioning_files_point_grafana_at_the_dashboards_and_prometheus():
    files = generated_files()
    provider = yaml.safe_load(files["provisioning/dashboards/gputuned.yaml"])
    assert provider["apiVersion"] == 1
    assert provider["providers"][0]["options"]["path"] == str(PROVISIONED_DIR)
    assert provider["providers"][0]["type"] == "file"
    datasource = yaml.safe_load(files["provisioning/datasources/gputuned.yaml"])["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"].startswith("http://127.0.0.1:")


def test_tuning_dashboard_marks_decisions_and_draws_the_slo():
    tuning = DASHBOARDS["gputuned-tuning.json"]
    [annotation] = tuning["annotations"]["list"]
    assert "gputuned_tuner_decisions_total" in annotation["expr"]
    exprs = [expr for _, expr in queries(tuning)]
    assert any("gputuned_tuner_slo_p99_seconds" in expr for expr in exprs)
    knobs = {"max_batch_size", "max_queue_delay_us", "streams", "pool_mb", "intra_op_threads", "sched_batch"}
    assert {knob for knob in knobs if any(f'knob="{knob}"' in expr for expr in exprs)} == knobs


def test_every_per_worker_query_selects_and_keeps_the_worker():
    """With several workers, a panel that mixed them up would draw nonsense: every panel query of
    a per-worker series selects $worker, and every aggregation in it keeps the worker label
    (or only its histogram's buckets, for the heatmap)."""
    for name, dashboard in DASHBOARDS.items():
        for where, expr in queries(dashboard):
            selectors = re.findall(r"gputuned_(?:worker|tuner|knob)_\w+\{([^}]*)\}", expr)
            if not selectors or where.startswith("variable"):
                continue
            assert all('worker=~"$worker"' in selector for selector in selectors), (name, where, expr)
            for grouping in re.findall(r"\b(?:sum|max|avg|count|group) by \(([^)]*)\)", expr):
                assert "worker" in grouping or grouping == "le", (name, where, expr)
