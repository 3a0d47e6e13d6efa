"""End to end on the CPU: the daemon tunes its real worker under real load."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest

from gputuned.control.client import ControlClient
from gputuned.daemon.status import worker_entry
from gputuned.loadgen import LoadPlan, run_load
from gputuned.testing.processes import http_get, run_cli, running_supervising_daemon, running_worker

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
            report = worker_entry(client.request("status")["status"])
        scraped = http_get(metrics)
    decisions = [json.loads(line) for line in (tmp_path / "online" / "state" / "decisions.jsonl").read_text().splitlines()]
    print(
        f"\ngoodput at the defaults {default:.1f}/s, after 45 s of tuning {tuned:.1f}/s ({tuned / default:.1f}x); "
        f"knobs {report['knobs']}; {len(decisions)} decisions"
    )
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


def test_recommend_mode_changes_nothing_and_a_hand_set_knob_stays_frozen_until_resumed(tmp_path):
    with running_supervising_daemon(tmp_path) as (_, _metrics, worker, admin):
        assert "worker: tuner recommend" in run_cli("tune", "--socket", str(admin), "--mode", "recommend").stdout
        asyncio.run(run_load(LoadPlan(url=worker, concurrency=32, requests=10**9, duration=12)))
        with ControlClient(admin) as client:
            report = worker_entry(client.request("status")["status"])
        assert report["knobs"]["max_batch_size"] == 1  # nothing applied
        actions = {d["action"] for d in report["decisions"]}
        assert "recommend" in actions and actions <= {"recommend", "shift"}  # shift: the load began or ended

        assert run_cli("set", "--socket", str(admin), "max_batch_size=4").returncode == 0
        out = run_cli("tune", "--socket", str(admin), "--mode", "auto").stdout
        assert "frozen by hand: max_batch_size" in out
        asyncio.run(run_load(LoadPlan(url=worker, concurrency=32, requests=10**9, duration=12)))
        with ControlClient(admin) as client:
            report = worker_entry(client.request("status")["status"])
        assert report["knobs"]["max_batch_size"] == 4
        assert not any(d["knob"] == "max_batch_size" and d["action"] == "apply" for d in report["decisions"])
        resumed = run_cli("tune", "--socket", str(admin), "--resume").stdout
        assert "frozen by hand: none" in resumed
        human = run_cli("status", "--socket", str(admin)).stdout
        assert "worker: tuner auto" in human and "last decisions:" in human
    time.sleep(0.1)


def test_a_batch_size_that_runs_out_of_memory_is_reverted_and_the_worker_stays_up(tmp_path):
    # A model whose batches of more than two items the CPU allocator refuses (tests/memory_hungry_model.py).
    # The daemon resumes at batch 2 from its state, so the batch tuner's first step fails.
    workload = "build|cpu|FP32[4]"  # the model's name is its factory's
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "knobs.json").write_text(
        json.dumps({"version": 1, "last_workload": workload, "workloads": {workload: {"max_batch_size": 2}}})
    )
    with running_supervising_daemon(
        tmp_path,
        "--log-level",
        "info",
        device="cpu",
        model="tests.memory_hungry_model:build",
        input_shape="4",
        tuning={"slo_p99_ms": 1000.0},
    ) as (_, metrics, worker, admin):
        result = asyncio.run(run_load(LoadPlan(url=worker, concurrency=16, requests=10**9, duration=15)))
        request = urllib.request.Request(
            f"{worker}/v2/models/build/infer",
            method="POST",
            data=json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [4, 4], "data": [0.0] * 16}]}).encode(),
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)  # loopback
        with ControlClient(admin) as client:
            report = worker_entry(client.request("status")["status"])
        scraped = http_get(metrics)
    decisions = [json.loads(line) for line in (tmp_path / "state" / "decisions.jsonl").read_text().splitlines()]
    batch = [(d["action"], d["old"], d["new"]) for d in decisions if d["knob"] == "max_batch_size"]
    print(
        f"\nout of memory at batch 4: batch decisions {batch}; {result.ok} ok, {dict(result.errors)} failed; "
        f"worker restarts {report['restarts']}"
    )
    assert batch[:2] == [("apply", 2, 4), ("revert", 4, 2)]
    assert all(new < 4 for action, _, new in batch[2:] if action == "apply")  # the ceiling is remembered
    assert report["restarts"] == 0 and report["state"] == "ready"
    assert result.ok > 0 and set(result.errors) == {"http_503"}  # the failed batches' requests, told why
    assert 'gputuned_worker_oom_events_total{worker="worker"} 0.0' not in scraped
    assert refused.value.code == 503 and "out of memory" in json.loads(refused.value.read())["error"]
