"""The daemon never waits on a worker, and what it knows of one is honest.

Under `gputuned run`: a worker stopped by SIGSTOP holds up neither sampling nor `gputuned
status` until it is replaced; a set whose ack takes seconds holds up only itself; a hello
that breaks the protocol is reported as such, not killed as hung; a set that fails
part-way changes nothing and the daemon's view agrees with the worker's; SIGHUP applies a
[tuning] section whole or refuses it.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gputuned.control.client import ControlClient, ControlError
from gputuned.testing.processes import (
    free_port,
    http_get,
    running_supervising_daemon,
    wait_for,
    worker_status,
    write_daemon_config,
)

pytestmark = pytest.mark.integration
AGENT_WORKER = Path(__file__).parent / "agent_worker.py"
SAMPLING_INTERVAL = 1.0  # the default


def agent_command(*args: str) -> list[str]:
    return [sys.executable, str(AGENT_WORKER), "--socket", "{control_socket}", *args]


def metric(metrics: str, name: str) -> float:
    for family in text_string_to_metric_families(http_get(metrics)):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"no {name}")


class Watch:
    """Asks for status and scrapes /metrics every 0.1 s, recording the worst answer time and sample age."""

    def __init__(self, admin: Path, metrics: str) -> None:
        self.admin, self.metrics = admin, metrics
        self.status_seconds: list[float] = []
        self.ages: list[float] = []
        self.last: dict = {}

    def once(self) -> dict:
        started = time.monotonic()
        self.last = worker_status(self.admin)
        self.status_seconds.append(time.monotonic() - started)
        self.ages.append(metric(self.metrics, "gputuned_sample_age_seconds"))
        time.sleep(0.1)
        return self.last


def test_a_stopped_worker_holds_up_neither_sampling_nor_status_until_it_is_replaced(tmp_path):
    with running_supervising_daemon(tmp_path, ping_timeout_seconds=3.0, tuning={"mode": "frozen"}) as (_, metrics, _w, admin):
        watch = Watch(admin, metrics)
        first_pid = watch.once()["pid"]
        os.kill(first_pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            while time.monotonic() - stopped_at < 60:  # bounded: replacement takes ~5 s
                status = watch.once()
                if status["pid"] not in (None, first_pid) and status["state"] == "ready":
                    break
            replaced_after = time.monotonic() - stopped_at
        finally:
            if Path(f"/proc/{first_pid}").exists():
                os.kill(first_pid, signal.SIGKILL)
    print(
        f"\nworker SIGSTOPped (ping every 0.5 s, timeout 3 s): replaced and ready after {replaced_after:.2f} s; "
        f"{len(watch.status_seconds)} status answers meanwhile, slowest {max(watch.status_seconds) * 1000:.0f} ms; "
        f"sample age at most {max(watch.ages):.2f} s (sampling every {SAMPLING_INTERVAL:g} s)"
    )
    assert watch.last["pid"] != first_pid and watch.last["state"] == "ready"
    assert watch.last["restarts"] == 1
    assert max(watch.status_seconds) < 1.0
    assert max(watch.ages) < 2 * SAMPLING_INTERVAL


def test_a_slow_ack_holds_up_neither_sampling_nor_another_clients_status(tmp_path):
    command = agent_command("--ack-seconds", "3")
    with running_supervising_daemon(tmp_path, wait_ready=False, command=command, ping_timeout_seconds=10.0) as (
        _,
        metrics,
        _w,
        admin,
    ):
        wait_for(lambda: worker_status(admin)["state"] == "ready", 30, "the agent worker")
        outcome: dict = {}

        def slow_set() -> None:
            started = time.monotonic()
            with ControlClient(admin, timeout=20) as client:
                outcome["reply"] = client.request("set", knobs={"pool_mb": 64})
            outcome["seconds"] = time.monotonic() - started

        setter = threading.Thread(target=slow_set)
        setter.start()
        watch = Watch(admin, metrics)
        deadline = time.monotonic() + 15
        while setter.is_alive() and time.monotonic() < deadline:
            watch.once()
        setter.join(timeout=10)
        after = worker_status(admin)
    print(
        f"\na set acknowledged after {outcome['seconds']:.2f} s; meanwhile {len(watch.status_seconds)} status answers "
        f"on another connection, slowest {max(watch.status_seconds) * 1000:.0f} ms; sample age at most {max(watch.ages):.2f} s"
    )
    assert outcome["reply"]["applied"] == {"pool_mb": 64} and outcome["seconds"] >= 2.5
    assert len(watch.status_seconds) >= 10 and max(watch.status_seconds) < 1.0
    assert max(watch.ages) < 2 * SAMPLING_INTERVAL
    assert after["knobs"]["pool_mb"] == 64 and after["restarts"] == 0


def test_a_set_the_worker_never_answers_gets_it_replaced_after_one_timeout(tmp_path):
    # The agent takes 60 s to apply pool_mb and answers nothing meanwhile: a hung worker.
    command = agent_command("--ack-seconds", "60")
    timeouts = {"ping_interval_seconds": 0.5, "ping_timeout_seconds": 4.0}
    with running_supervising_daemon(tmp_path, wait_ready=False, command=command, **timeouts) as (_, _m, _w, admin):
        first_pid = wait_for(lambda: (s := worker_status(admin))["state"] == "ready" and s, 30, "the agent worker")["pid"]
        started = time.monotonic()
        with pytest.raises(ControlError, match="did not answer the set within 4 s"), ControlClient(admin, timeout=30) as client:
            client.request("set", knobs={"pool_mb": 64})
        timed_out = time.monotonic() - started
        wait_for(lambda: worker_status(admin)["pid"] not in (None, first_pid), 30, "the hung worker replaced")
        replaced = time.monotonic() - started
    print(f"\na set never answered: timed out after {timed_out:.2f} s, the worker replaced {replaced:.2f} s after the set")
    # A set left unanswered is a ping left unanswered: killed at the watch's next look after
    # the set gave up, not after a further ping timeout (the agent's stats still flow).
    assert 3.5 <= timed_out < 6.0
    assert replaced < timed_out + 3.0


def test_a_malformed_hello_is_a_protocol_error_not_a_hung_worker(tmp_path):
    command = agent_command("--malformed-hello")
    timeouts = {"ping_interval_seconds": 0.2, "ping_timeout_seconds": 1.0}
    with running_supervising_daemon(tmp_path, wait_ready=False, command=command, **timeouts) as (_, metrics, _w, admin):
        status = wait_for(lambda: (s := worker_status(admin))["state"] == "protocol_error" and s, 30, "the protocol error")
        pid = status["pid"]
        time.sleep(3.0)  # three ping timeouts
        later = worker_status(admin)
        up = metric(metrics, "gputuned_worker_up")
    log = (tmp_path / "daemon.log").read_text()
    print(f"\nmalformed hello: {status['message']}")
    assert "hello: knob 'max_batch_size' has no 'max'" in status["message"]
    assert later["state"] == "protocol_error" and later["pid"] == pid
    assert later["restarts"] == 0 and "hung" not in log and "killing" not in log
    assert log.count("breaks the control protocol") == 1  # said once, though the connection is retried
    assert up == 0.0


def test_sighup_applies_the_tuning_section_whole_or_refuses_it(tmp_path):
    port = free_port()
    command = agent_command()
    with running_supervising_daemon(tmp_path, wait_ready=False, worker_port=port, command=command) as (
        process,
        metrics,
        _w,
        admin,
    ):
        wait_for(lambda: worker_status(admin)["state"] == "ready", 30, "the agent worker")
        assert metric(metrics, "gputuned_tuner_slo_p99_seconds") == 0.1
        write_daemon_config(tmp_path, port, {"slo_p99_ms": 50.0, "mode": "recommend", "trial_seconds": 5.0}, command=command)
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: metric(metrics, "gputuned_tuner_slo_p99_seconds") == 0.05, 10, "the new SLO")
        assert worker_status(admin)["tuner"]["mode"] == "recommend"
        write_daemon_config(tmp_path, port, {"slo_p99_ms": 0.0, "mode": "auto"}, command=command)
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in (tmp_path / "daemon.log").read_text(), 10, "the refusal")
        time.sleep(1.0)  # two tuning steps
        slo, mode = metric(metrics, "gputuned_tuner_slo_p99_seconds"), worker_status(admin)["tuner"]["mode"]
    log = (tmp_path / "daemon.log").read_text()
    assert "tuning settings reloaded: SLO p99 50 ms, mode recommend" in log
    assert "tuning.slo_p99_ms: 0.0 is out of range" in log
    assert slo == 0.05 and mode == "recommend"  # the refused file changed nothing


def test_a_set_that_fails_part_way_changes_nothing_and_the_views_agree(tmp_path):
    with running_supervising_daemon(tmp_path, tuning={"mode": "frozen"}) as (_, _metrics, _w, admin):
        before = worker_status(admin)
        pid = before["pid"]
        worker_socket = tmp_path / "run" / "worker.sock"
        with ControlClient(worker_socket) as client:
            pool_max = client.hello["knobs"]["pool_mb"]["max"]
        vm_size = next(
            int(line.split()[1]) * 1024
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("VmSize:")
        )
        # The worker's address space may grow by 256 MiB more: a 2 GiB pool cannot be allocated.
        # Only the soft limit, which may be raised again without CAP_SYS_RESOURCE.
        soft, hard = resource.prlimit(pid, resource.RLIMIT_AS)
        resource.prlimit(pid, resource.RLIMIT_AS, (vm_size + 256 * 2**20, hard))
        pool = min(2048, pool_max)
        with ControlClient(admin, timeout=20) as client, pytest.raises(ControlError) as refused:
            client.request("set", knobs={"max_batch_size": 8, "pool_mb": pool})
        after = worker_status(admin)
        with ControlClient(worker_socket) as client:
            held = {name: spec["value"] for name, spec in client.hello["knobs"].items()}
        resource.prlimit(pid, resource.RLIMIT_AS, (soft, hard))
        with ControlClient(admin, timeout=20) as client:
            accepted = client.request("set", knobs={"max_batch_size": 8, "pool_mb": 16})["applied"]
        final = worker_status(admin)
    print(f"\nrefused: {refused.value}")
    assert pool > 256
    assert f"pool_mb={pool} could not be applied" in str(refused.value)
    assert "restored max_batch_size=1: nothing was changed" in str(refused.value)
    assert after["knobs"] == before["knobs"] == held
    assert after["pid"] == pid and after["restarts"] == 0
    assert accepted == {"max_batch_size": 8, "pool_mb": 16}
    assert final["knobs"]["max_batch_size"] == 8 and final["knobs"]["pool_mb"] == 16
