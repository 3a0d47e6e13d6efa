"""A fleet on loopback: three daemons as three instances (their own ports and state, eight fake
GPUs and two real workers each) scraped by one real Prometheus that evaluates the rules in
deploy/prometheus. Every query of the fleet dashboard and every recording rule must return one
series per instance, or per instance and worker: nothing collapses hosts together and
nothing is counted twice."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import pytest
import yaml

from gputuned.loadgen import LoadPlan, run_load
from gputuned.testing.processes import (
    REPO_ROOT,
    free_port,
    prometheus_query,
    running_prometheus,
    running_supervising_daemon,
)
from tests.dashboard_queries import LABEL_VALUES, generative, load_dashboards, queries, substitute, variable_length
from tests.integration.test_prometheus import wait_for

pytestmark = pytest.mark.integration

HOSTS = 3
WORKERS = ("a", "b")
RULES = REPO_ROOT / "deploy" / "prometheus" / "gputuned-rules.yaml"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[tuple[str, list[str]]]:
    """(Prometheus base URL, the instances), the workers under a light open-loop load."""
    with contextlib.ExitStack() as stack:
        instances, urls = [], []
        for host in range(HOSTS):
            tmp = tmp_path_factory.mktemp(f"host{host}")
            ports = [free_port() for _ in WORKERS]
            workers = [
                {"name": name, "listen": f"127.0.0.1:{port}", "cpus": str(index)}
                for index, (name, port) in enumerate(zip(WORKERS, ports))
            ]
            daemon = running_supervising_daemon(tmp, "--nvml-module", "gputuned.testing.fake_nvml:hgx8", workers=workers)
            _, metrics, _, _ = stack.enter_context(daemon)
            instances.append(metrics.removeprefix("http://").removesuffix("/metrics"))
            urls += [f"http://127.0.0.1:{port}" for port in ports]
        plan = LoadPlan(
            url=urls[0],
            more_urls=tuple(urls[1:]),
            concurrency=None,
            rate=30,
            requests=10**6,
            duration=600,
            stop=threading.Event(),
        )
        load = threading.Thread(target=lambda: asyncio.run(run_load(plan)))
        load.start()
        stack.callback(load.join, 60)
        stack.callback(plan.stop.set)
        workdir = tmp_path_factory.mktemp("prometheus")
        yield stack.enter_context(running_prometheus(instances, workdir, rule_files=[RULES])), instances


def per_instance(series: list[dict]) -> list[tuple[str, ...]]:
    """The (instance[, worker]) of each series, sorted."""
    return sorted(tuple(s["metric"][label] for label in ("instance", "worker") if label in s["metric"]) for s in series)


def expected(labels: tuple[str, ...], instances: list[str]) -> list[tuple[str, ...]]:
    if labels == ("instance",):
        return sorted((instance,) for instance in instances)
    return sorted((instance, worker) for instance in instances for worker in WORKERS)


def test_every_fleet_dashboard_query_has_one_series_per_instance_and_worker(fleet):
    prometheus, instances = fleet
    found: dict[str, object] = {}

    def wrong() -> list[str]:
        problems = []
        for where, expr in queries(load_dashboards()["gputuned-fleet.json"]):
            if generative(expr) or variable_length(expr):
                continue  # an LLM worker's columns and a variable-length model's: test_vllm.py and test_encoders.py
            variable = LABEL_VALUES.fullmatch(substitute(expr, ".*"))
            if variable:
                values = sorted({s["metric"][variable["label"]] for s in prometheus_query(prometheus, variable["selector"])})
                want = {"instance": sorted(instances), "worker": sorted(WORKERS), "gpu": [str(i) for i in range(8)]}[
                    variable["label"]
                ]
                if values != want:
                    problems.append(f"{where}: {values}")
                continue
            series = per_instance(prometheus_query(prometheus, substitute(expr, ".*")))
            found[where] = series
            if series != expected(("instance", "worker"), instances):
                problems.append(f"{where}: {series}")
        return problems

    assert wait_for(wrong, 120) == []
    assert len(found) >= 10


def test_every_recording_rule_has_one_series_per_instance_or_per_instance_and_worker(fleet):
    prometheus, instances = fleet
    records = [
        rule["record"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "record" in rule
    ]

    def wrong() -> list[str]:
        problems = []
        for record in records:
            labels = ("instance",) if record.startswith("instance:") else ("instance", "worker")
            series = per_instance(prometheus_query(prometheus, record))
            if series != expected(labels, instances):
                problems.append(f"{record}: {series}")
        return problems

    assert wait_for(wrong, 120) == []
    alerts = prometheus_query(prometheus, 'ALERTS{alertname="GputunedGpuXidError"}')  # the fake GPU 0 reported XID 79
    assert sorted(a["metric"]["instance"] for a in alerts) == sorted(instances)
