"""A real Prometheus server on loopback scrapes a real daemon supervising its worker under load:
every metric family is queryable, every dashboard query returns data, and the GPU energy
charged to the worker adds up."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gputuned.catalog import METRIC_SPECS
from gputuned.collectors import kubelet
from gputuned.daemon.status import worker_entry
from gputuned.loadgen import LoadPlan, run_load
from gputuned.testing.processes import admin_status, prometheus_query, running_prometheus, running_supervising_daemon
from tests.dashboard_queries import (
    GENERATIVE_NAMES,
    VARIABLE_LENGTH_NAMES,
    generative,
    load_dashboards,
    queries,
    returns_series,
    substitute,
    variable_length,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scraped(tmp_path_factory) -> Iterator[tuple[str, str, Path]]:
    """(Prometheus base URL, the daemon's instance label, its admin socket). The live host's /proc, /sys and
    psutil, the daemon's real worker under real load, and eight fake GPUs (this machine has
    none) on which the worker shows up as a process."""
    tmp_path = tmp_path_factory.mktemp("prometheus")
    args = ("--nvml-module", "gputuned.testing.fake_nvml:hgx8")
    with running_supervising_daemon(tmp_path, *args, placement="0") as (_, metrics, worker, admin):
        plan = LoadPlan(url=worker, concurrency=2, requests=10**6, duration=300, stop=threading.Event())
        load = threading.Thread(target=lambda: asyncio.run(run_load(plan)))
        load.start()
        target = metrics.removeprefix("http://").removesuffix("/metrics")
        try:
            with running_prometheus([target], tmp_path) as prometheus:
                yield prometheus, target, admin
        finally:
            plan.stop.set()
            load.join(timeout=60)


def wait_for(check, seconds: float):
    """Polls `check()` (which returns what is still missing) until it returns nothing or time is up."""
    deadline = time.monotonic() + seconds
    missing = check()
    while missing and time.monotonic() < deadline:
        time.sleep(1)
        missing = check()
    return missing


def test_prometheus_scrapes_every_metric_family(scraped):
    prometheus, _, _ = scraped
    # Prometheus stores a histogram as its _bucket, _sum and _count series.
    expected = {f"{spec.name}_count" if spec.kind == "histogram" else spec.name for spec in METRIC_SPECS}
    # Only after the worker has exited once (test_supervision.py scrapes it then), and
    # only while a knob is frozen by hand (test_tuning.py covers that).
    expected -= {"gputuned_worker_last_exit_code", "gputuned_tuner_knob_frozen"}
    expected -= {spec.name for spec in kubelet.SPECS}  # no kubelet here: tests/integration/test_kubelet.py has one
    expected -= GENERATIVE_NAMES  # an LLM worker's: tests/integration/test_vllm.py scrapes a real vLLM's
    expected -= VARIABLE_LENGTH_NAMES  # a variable-length model's: test_encoders.py reads them

    def missing() -> set[str]:
        result = prometheus_query(prometheus, 'count by (__name__) ({__name__=~"gputuned_.+"})')
        return expected - {series["metric"]["__name__"] for series in result}

    assert wait_for(missing, 60) == set()
    up = prometheus_query(prometheus, 'up{job="gputuned"}')
    assert [series["value"][1] for series in up] == ["1"]
    offnode = prometheus_query(prometheus, "gputuned_worker_offnode_ratio")
    assert len(offnode) == 1 and 0.0 <= float(offnode[0]["value"][1]) <= 1.0
    gpus = prometheus_query(prometheus, "gputuned_gpu_info")
    assert sorted(series["metric"]["gpu"] for series in gpus) == [str(i) for i in range(8)]
    p99 = "histogram_quantile(0.99, rate(gputuned_worker_latency_seconds_bucket[30s]))"
    assert wait_for(lambda: not prometheus_query(prometheus, p99), 30) is False
    assert len(prometheus_query(prometheus, p99)) == 1


def test_requests_within_the_objective_are_counted_and_never_exceed_those_answered(scraped):
    prometheus, _, _ = scraped
    met = "gputuned_worker_slo_met_requests_total"
    answered = 'sum by (instance, worker) (gputuned_worker_requests_total{outcome="ok"})'
    assert wait_for(lambda: not prometheus_query(prometheus, f"{met} > 0"), 30) is False
    excess = prometheus_query(prometheus, f"{met} - on (instance, worker) {answered}")
    assert excess and all(float(series["value"][1]) <= 0 for series in excess), excess


@pytest.mark.parametrize("name", sorted(load_dashboards()))
def test_every_dashboard_query_returns_series(scraped, name):
    # The GPU panels show the fake NVML's eight GPUs here; on a real host they need a real GPU.
    prometheus, instance, _ = scraped
    # An LLM worker's panels: tests/integration/test_vllm.py checks them against a real vLLM;
    # a variable-length model's: test_encoders.py, against a worker serving one.
    dashboard_queries = [
        (where, substitute(expr, instance))
        for where, expr in queries(load_dashboards()[name])
        if not generative(expr) and not variable_length(expr)
    ]

    def empty() -> list[str]:
        return [f"{where}: {expr}" for where, expr in dashboard_queries if not returns_series(prometheus, expr)]

    # The tuner's first decision (the annotation) comes a few seconds after the worker's first stats.
    assert wait_for(empty, 90) == []


def test_every_joule_of_the_workers_gpu_is_charged_to_it_or_to_a_reason(scraped):
    # The fake GPU 0 runs the daemon's worker alone at a steady 312 W; the other seven run nothing.
    # (rate() divides by its whole range: the range must be within the counters' history.)
    prometheus, _, admin = scraped
    idle = 'rate(gputuned_gpu_unattributed_energy_joules_total{reason="idle", gpu="3"}[10s])'
    assert wait_for(lambda: not prometheus_query(prometheus, f"{idle} > 300"), 60) is False
    charged = 'sum by (gpu) (rate(gputuned_worker_energy_joules_total{gpu="0"}[10s]))'
    board = 'rate(gputuned_gpu_energy_joules_total{gpu="0"}[10s])'
    unattributed = 'sum by (gpu) (rate(gputuned_gpu_unattributed_energy_joules_total{gpu="0"}[10s]))'
    split = prometheus_query(prometheus, f"({charged} + on (gpu) {unattributed}) / on (gpu) {board}")
    assert len(split) == 1 and abs(float(split[0]["value"][1]) - 1) < 0.05, split
    assert float(prometheus_query(prometheus, charged)[0]["value"][1]) > 250  # the worker is GPU 0's only process
    energy = "sum by (worker) (rate(gputuned_worker_energy_joules_total[10s]))"
    completed = 'sum by (worker) (rate(gputuned_worker_requests_total{outcome="ok"}[10s]))'
    per_request = prometheus_query(prometheus, f"{energy} / {completed}")
    assert len(per_request) == 1 and float(per_request[0]["value"][1]) > 0

    # The tuner's windows see the GPU: its SM activity (GPM) and the power charged to the worker.
    def performance() -> dict:
        return worker_entry(admin_status(admin))["performance"] or {}

    wait_for(lambda: performance().get("watts") is None, 30)
    seen = performance()
    assert seen["sm_active"] == pytest.approx(0.71) and 250 < seen["watts"] < 375, seen
    assert seen["joules_per_request"] == pytest.approx(seen["watts"] / seen["throughput_per_second"])
