"""A real Prometheus server on loopback scrapes a real daemon; every metric family is queryable."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gputuned.catalog import METRIC_SPECS
from gputuned.loadgen import LoadPlan, run_load
from tests.integration.processes import prometheus_query, running_prometheus, running_supervising_daemon

pytestmark = pytest.mark.integration


def test_prometheus_scrapes_every_metric_family(tmp_path):
    # The live host's /proc, /sys and psutil, the daemon's real worker under real load,
    # and eight fake GPUs (this machine has none) on which the worker shows up as a process.
    args = ("--nvml-module", "tests.fakes.fake_nvml:hgx8")
    with running_supervising_daemon(tmp_path, *args, device="cpu", placement="0") as (_, metrics, worker, _admin):
        load = threading.Thread(target=lambda: asyncio.run(run_load(LoadPlan(url=worker, concurrency=2, requests=3000, duration=60))))
        load.start()
        target = metrics.removeprefix("http://").removesuffix("/metrics")
        try:
            with running_prometheus([target], tmp_path) as prometheus:
                # Prometheus stores a histogram as its _bucket, _sum and _count series.
                expected = {f"{spec.name}_count" if spec.kind == "histogram" else spec.name for spec in METRIC_SPECS}
                # Only after the worker has exited once (test_supervision.py scrapes it then), and
                # only while a knob is frozen by hand (test_tuning.py covers that).
                expected -= {"gputuned_worker_last_exit_code", "gputuned_tuner_knob_frozen"}
                found: set[str] = set()
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and found != expected:
                    result = prometheus_query(prometheus, 'count by (__name__) ({__name__=~"gputuned_.+"})')
                    found = {series["metric"]["__name__"] for series in result} & expected
                    time.sleep(1)
                assert expected - found == set()
                up = prometheus_query(prometheus, 'up{job="gputuned"}')
                assert [series["value"][1] for series in up] == ["1"]
                offnode = prometheus_query(prometheus, "gputuned_worker_offnode_ratio")
                assert len(offnode) == 1 and 0.0 <= float(offnode[0]["value"][1]) <= 1.0
                gpus = prometheus_query(prometheus, "gputuned_gpu_info")
                assert sorted(series["metric"]["gpu"] for series in gpus) == [str(i) for i in range(8)]
                p99 = prometheus_query(prometheus, "histogram_quantile(0.99, rate(gputuned_worker_latency_seconds_bucket[30s]))")
                assert len(p99) == 1
        finally:
            load.join(timeout=90)
