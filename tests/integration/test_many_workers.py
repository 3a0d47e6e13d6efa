"""One daemon, two real CPU workers, each pinned to a core of its own.

Both serve and are tuned under load (one trial at a time on the host); killing one restarts
only it; status and metrics show both.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gputuned.control.client import ControlClient, ControlError
from gputuned.loadgen import LoadPlan, run_load
from gputuned.testing.processes import (
    admin_status,
    free_port,
    freeze_tuner,
    http_get,
    run_cli,
    running_supervising_daemon,
    wait_for,
    worker_status,
)

pytestmark = pytest.mark.integration
LOAD_SECONDS = 40.0
CLIENTS = 8


def trials(state: Path, name: str) -> list[tuple[float, float]]:
    """(applied, judged) wall-clock times of each trial of a worker, from its decision log."""
    decisions = [json.loads(line) for line in (state / "workers" / name / "decisions.jsonl").read_text().splitlines()]
    spans, started = [], None
    for decision in decisions:
        if decision["action"] == "apply":
            started = decision["t"]
        elif decision["action"] in ("keep", "revert") and started is not None:
            spans.append((started, decision["t"]))
            started = None
    return spans


def test_two_workers_on_their_own_cores_are_supervised_and_tuned_apart(tmp_path: Path):
    ports = {"left": free_port(), "right": free_port()}
    workers = [
        # A model whose batches pay a fixed wait (gputuned/testing/launch_bound_model.py): batching pays off clearly, and the
        # workers' CPU does not compete with the load generator's on this 2-core machine.
        {
            "name": name,
            "listen": f"127.0.0.1:{port}",
            "cpus": str(index % (os.cpu_count() or 1)),
            "model": "gputuned.testing.launch_bound_model:build",
            "input_shape": "16",
        }
        for index, (name, port) in enumerate(ports.items())
    ]
    with running_supervising_daemon(tmp_path, workers=workers) as (_, metrics, _w, admin):
        report = admin_status(admin)
        assert [entry["name"] for entry in report["workers"]] == ["left", "right"]
        assert [entry["placement"]["cpus"] for entry in report["workers"]] == [w["cpus"] for w in workers]
        with pytest.raises(ControlError, match="name one with --worker: left, right"), ControlClient(admin) as client:
            client.set({"max_batch_size": 2})
        refused = run_cli("set", "--socket", str(admin), "--worker", "nope", "max_batch_size=2")
        assert refused.returncode == 1 and "no worker named 'nope'; workers: left, right" in refused.stderr

        # The host loaded as a whole: one load generator spreading requests over both workers.
        urls = [f"http://127.0.0.1:{port}" for port in ports.values()]
        plan = LoadPlan(url=urls[0], more_urls=tuple(urls[1:]), concurrency=2 * CLIENTS, requests=10**6, duration=LOAD_SECONDS)
        result = asyncio.run(run_load(plan))
        tuned = {name: worker_status(admin, name) for name in ports}
        scraped = http_get(metrics)
        page = http_get(metrics.removesuffix("metrics"))
        human = run_cli("status", "--socket", str(admin))

        # Killing one restarts only it; the other keeps its process and its knobs.
        before = {name: freeze_tuner(admin, name) for name in ports}
        os.kill(before["left"]["pid"], signal.SIGKILL)
        wait_for(lambda: worker_status(admin, "left")["pid"] not in (None, before["left"]["pid"]), 30, "a new left worker")
        wait_for(lambda: worker_status(admin, "left")["state"] == "ready", 60, "the new left worker")
        after = {name: worker_status(admin, name) for name in ports}

    answered = {name: result.ok_by_target[url] for name, url in zip(ports, urls)}
    print(
        f"\n{result.ok / result.elapsed:.0f} req/s over both; "
        + "; ".join(
            f"{name}: {answered[name]} answered, knobs {tuned[name]['knobs']}, {len(trials(tmp_path / 'state', name))} trials"
            for name in ports
        )
    )
    assert sum(result.errors.values()) == 0 and all(count > 0 for count in answered.values())
    for name in ports:
        assert tuned[name]["knobs"]["max_batch_size"] > 1, (name, tuned[name]["decisions"])  # tuned from its default of 1
        assert any(d["action"] == "keep" for d in tuned[name]["decisions"])
    # One trial at a time on the host: no two trials of the two workers overlap.
    left, right = trials(tmp_path / "state", "left"), trials(tmp_path / "state", "right")
    assert left and right
    overlapping = [(a, b) for a in left for b in right if a[0] < b[1] and b[0] < a[1]]
    assert overlapping == []
    assert after["right"]["pid"] == before["right"]["pid"] and after["right"]["knobs"] == before["right"]["knobs"]
    assert after["right"]["restarts"] == 0 and after["left"]["restarts"] == 1
    families = {family.name: family for family in text_string_to_metric_families(scraped)}
    info = {sample.labels["worker"]: sample.labels for sample in families["gputuned_worker_info"].samples}
    assert set(info) == {"left", "right"} and all(labels["gpu"] == "" for labels in info.values())
    assert {s.labels["worker"] for s in families["gputuned_tuner_goodput_requests_per_second"].samples} == {"left", "right"}
    assert "left" in human.stdout and "right" in human.stdout and "KNOB" in human.stdout
    assert 'id="worker-left"' in page and 'id="worker-right"' in page
