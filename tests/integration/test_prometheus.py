"""A real Prometheus server on loopback scrapes a real daemon; every metric family is queryable."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from gputuned.catalog import METRIC_SPECS
from tests.integration.processes import prometheus_query, running_daemon, running_prometheus

pytestmark = pytest.mark.integration


def test_prometheus_scrapes_every_metric_family(tmp_path):
    # The live host's /proc, /sys and psutil, a real child process as the worker, and
    # eight fake GPUs (this machine has none) on which that child shows up as a process.
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        env = {"GPUTUNED_FAKE_WORKER_PID": str(worker.pid)}
        args = ("--nvml-module", "tests.fakes.fake_nvml:hgx8", "--worker-pid", str(worker.pid))
        with running_daemon(*args, env=env) as (_, url):
            target = url.removeprefix("http://").removesuffix("/metrics")
            with running_prometheus([target], tmp_path) as prometheus:
                expected = {spec.name for spec in METRIC_SPECS}
                found: set[str] = set()
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and found != expected:
                    result = prometheus_query(prometheus, 'count by (__name__) ({__name__=~"gputuned_.+"})')
                    found = {series["metric"]["__name__"] for series in result} & expected
                    time.sleep(1)
                assert expected - found == set()
                up = prometheus_query(prometheus, 'up{job="gputuned"}')
                assert [series["value"][1] for series in up] == ["1"]
                # One series per family, with the labels dashboards rely on.
                offnode = prometheus_query(prometheus, "gputuned_worker_offnode_ratio")
                assert len(offnode) == 1 and 0.0 <= float(offnode[0]["value"][1]) <= 1.0
                gpus = prometheus_query(prometheus, "gputuned_gpu_info")
                assert sorted(series["metric"]["gpu"] for series in gpus) == [str(i) for i in range(8)]
    finally:
        worker.kill()
        worker.wait()
