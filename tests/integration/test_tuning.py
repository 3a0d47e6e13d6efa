"""End to end on the CPU: the daemon tunes its real worker under real load."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from gputuned.control.client import ControlClient
from gputuned.loadgen import LoadPlan, run_load
from tests.integration.processes import REPO_ROOT, http_get, running_supervising_daemon, running_worker

pytestmark = pytest.mark.integration
SLO = 0.1


def goodput(url: str, seconds: float) -> float:
    result = asyncio.run(run_load(LoadPlan(url=url, concurrency=32, requests=10**9, duration=seconds)))
    return sum(1 for latency in result.latencies if latency <= SLO) / result.elapsed


def test_the_daemon_tunes_a_real_worker_to_a_better_goodput_and_logs_every_decision(tmp_path):
    (tmp_path / "defaults").mkdir()
    with running_worker(tmp_path / "defaults", "--log-level", "warning") as (_, base, _control):
        goodput(base, 2)  # warm-up
        default = goodput(base, 6)
    (tmp_path / "online").mkdir()
    with running_supervising_daemon(tmp_path / "online", "--log-level", "info") as (_, metrics, worker, admin):
        asyncio.run(run_load(LoadPlan(url=worker, concurrency=32, requests=10**9, duration=45)))
        tuned = goodput(worker, 6)
        with ControlClient(admin) as client:
            report = client.request("status")["status"]
        scraped = http_get(metrics)
    decisions = [json.loads(line) for line in (tmp_path / "online" / "state" / "decisions.jsonl").read_text().splitlines()]
    print(f"\ngoodput at the defaults {default:.1f}/s, after 45 s of tuning {tuned:.1f}/s ({tuned / default:.1f}x); "
          f"knobs {report['knobs']}; {len(decisions)} decisions")
    assert tuned > 1.3 * default
    kept = [d for d in decisions if d["action"] == "keep"]
    assert kept and all(d["baseline"] and d["trial"] for d in kept)
    assert {d["action"] for d in decisions} <= {"apply", "keep", "revert", "refuse", "shift"}
    applies = [d for d in decisions if d["action"] == "apply"]
    verdicts = [d for d in decisions if d["action"] in ("keep", "revert")]
    assert len(applies) - len(verdicts) in (0, 1)  # one trial may still be running
    assert all(apply["knob"] == verdict["knob"] for apply, verdict in zip(applies, verdicts))
    assert 'gputuned_tuner_decisions_total{action="keep",knob=' in scraped
    assert report["decisions"] and report["knobs"]["max_batch_size"] > 1
    state = json.loads((tmp_path / "online" / "state" / "knobs.json").read_text())
    assert state["workloads"]["resnet-mini|cpu|FP32[3,64,64]"]["max_batch_size"] > 1  # kept values persist


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gputuned", *args], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)


def test_recommend_mode_changes_nothing_and_a_hand_set_knob_stays_frozen_until_resumed(tmp_path):
    with running_supervising_daemon(tmp_path) as (_, _metrics, worker, admin):
        assert "tuner: recommend" in run_cli("tune", "--socket", str(admin), "--mode", "recommend").stdout
        asyncio.run(run_load(LoadPlan(url=worker, concurrency=32, requests=10**9, duration=12)))
        with ControlClient(admin) as client:
            report = client.request("status")["status"]
        assert report["knobs"]["max_batch_size"] == 1  # nothing applied
        actions = {d["action"] for d in report["decisions"]}
        assert "recommend" in actions and actions <= {"recommend", "shift"}  # shift: the load began or ended

        assert run_cli("set", "--socket", str(admin), "max_batch_size=4").returncode == 0
        out = run_cli("tune", "--socket", str(admin), "--mode", "auto").stdout
        assert "frozen by hand: max_batch_size" in out
        asyncio.run(run_load(LoadPlan(url=worker, concurrency=32, requests=10**9, duration=12)))
        with ControlClient(admin) as client:
            report = client.request("status")["status"]
        assert report["knobs"]["max_batch_size"] == 4
        assert not any(d["knob"] == "max_batch_size" and d["action"] == "apply" for d in report["decisions"])
        resumed = run_cli("tune", "--socket", str(admin), "--resume").stdout
        assert "frozen by hand: none" in resumed
        human = run_cli("status", "--socket", str(admin)).stdout
        assert "tuner: auto" in human and "last decisions:" in human
    time.sleep(0.1)
