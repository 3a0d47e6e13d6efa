"""`gputuned run` supervising a real worker: kills, hangs, crash loops, drains, state, placement."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gputuned.control.client import ControlClient
from gputuned.daemon.status import worker_entry
from gputuned.loadgen import LoadPlan, run_load
from gputuned.testing.processes import (
    free_port,
    http_get,
    run_cli,
    running_supervising_daemon,
    stop,
    wait_for,
    worker_status,
)

pytestmark = pytest.mark.integration
REFUSED = "ClientConnectorError"  # the worker's port was closed: the request was never accepted
STARTING = "http_503"  # the new worker answered "not ready yet" with Retry-After


def is_ready(base: str) -> bool:
    try:
        http_get(f"{base}/v2/health/ready", timeout=1)
        return True
    except (urllib.error.URLError, OSError):
        return False


def load_in_background(plan: LoadPlan) -> tuple[threading.Thread, dict]:
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(result=asyncio.run(run_load(plan))))
    thread.start()
    return thread, box


KILLS = 20
CLIENTS = 4


def test_a_worker_killed_20_times_under_load_is_restarted_each_time_with_its_knobs(tmp_path):
    # A 2 s crash-loop window: a worker that served for 2 s before its kill is not in a crash loop.
    with running_supervising_daemon(tmp_path, crash_loop_window_seconds=2.0) as (_, metrics, worker, admin):
        with ControlClient(admin) as client:
            assert client.set({"max_batch_size": 8, "streams": 2}) == {"max_batch_size": 8, "streams": 2}
        stop_load = threading.Event()
        thread, box = load_in_background(
            LoadPlan(url=worker, concurrency=CLIENTS, requests=10**7, duration=KILLS * 10, stop=stop_load)
        )
        kills, back_after, knobs = [], [], []
        for _ in range(KILLS):
            time.sleep(2.5)  # serving under load
            pid = worker_status(admin)["pid"]
            kills.append(time.perf_counter())
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not is_ready(worker), 5, "the worker to go down")
            wait_for(lambda: is_ready(worker), 60, "the restarted worker to serve")
            back_after.append(time.perf_counter() - kills[-1])
            with ControlClient(tmp_path / "run" / "worker.sock") as direct:
                knobs.append({name: spec["value"] for name, spec in direct.hello["knobs"].items()})
        time.sleep(1.0)
        stop_load.set()
        thread.join(timeout=60)
        status = worker_status(admin)
        scraped = http_get(metrics)
    result = box["result"]
    in_flight = [sent for sent, kind in result.failures if kind not in (REFUSED, STARTING)]
    # In flight at a kill: sent before it, or in the milliseconds the process took to die.
    per_kill = [sum(1 for sent in in_flight if kill - 2.0 < sent <= kill + 0.05) for kill in kills]
    not_killed = len(in_flight) - sum(per_kill)  # failures that no kill explains
    print(
        f"\n{KILLS} x kill -9 under {CLIENTS} clients: serving again after mean {sum(back_after) / KILLS:.2f} s, "
        f"max {max(back_after):.2f} s; failed in flight per kill: mean {sum(per_kill) / KILLS:.1f}, max {max(per_kill)} "
        f"(of {CLIENTS} in flight); {result.ok} ok; {result.errors.get(REFUSED, 0) + result.errors.get(STARTING, 0)} "
        "refused while down or starting"
    )
    assert status["restarts"] == KILLS and status["state"] == "ready"
    assert status["last_exit_code"] == -signal.SIGKILL
    assert all(k["max_batch_size"] == 8 and k["streams"] == 2 for k in knobs)
    assert max(per_kill) <= CLIENTS  # at most the requests the clients had in flight
    assert not_killed == 0
    assert f'gputuned_worker_restarts_total{{worker="worker"}} {KILLS}.0' in scraped
    assert 'gputuned_worker_last_exit_code{worker="worker"} -9.0' in scraped


def worker_processes(port: int) -> list[int]:
    """Pids of built-in workers listening on `port` (the daemon's children or orphans)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in command and f"127.0.0.1:{port}".encode() in command:
            found.append(int(entry.name))
    return found


def test_a_killed_daemon_leaves_the_worker_serving_and_the_next_one_adopts_it(tmp_path):
    port = free_port()
    with running_supervising_daemon(tmp_path, worker_port=port) as (first, _metrics, worker, admin):
        with ControlClient(admin) as client:
            client.set({"max_batch_size": 8})  # accepted and persisted
        pid = worker_status(admin)["pid"]
        with ControlClient(tmp_path / "run" / "worker.sock") as direct:
            direct.set({"max_batch_size": 2})  # a value the daemon never accepted, as a trial would be
        thread, box = load_in_background(LoadPlan(url=worker, concurrency=4, requests=10**6, duration=8))
        time.sleep(1.0)
        first.send_signal(signal.SIGKILL)
        first.wait()
    try:
        time.sleep(2.0)  # no daemon: the worker serves on alone
        assert worker_processes(port) == [pid]
        started = time.monotonic()
        with running_supervising_daemon(tmp_path, worker_port=port) as (_, metrics, _w, admin):
            adopted_after = time.monotonic() - started
            status = worker_status(admin)
            with ControlClient(tmp_path / "run" / "worker.sock") as direct:
                knobs = {name: spec["value"] for name, spec in direct.hello["knobs"].items()}
            thread.join(timeout=60)
            still_one = worker_processes(port)
            scraped = http_get(metrics)
        gone = wait_for(lambda: not worker_processes(port), 30, "the adopted worker to drain and exit")
    finally:
        for orphan in worker_processes(port):
            os.kill(orphan, signal.SIGKILL)
    result = box["result"]
    print(
        f"\ndaemon killed: {result.ok} requests served, {sum(result.errors.values())} failed; the next daemon "
        f"adopted worker {pid} and was ready after {adopted_after:.2f} s"
    )
    assert sum(result.errors.values()) == 0 and result.ok > 0
    assert status["pid"] == pid and still_one == [pid] and gone
    assert knobs["max_batch_size"] == 8  # the persisted knobs, not the unaccepted trial value
    assert 'gputuned_worker_up{worker="worker"} 1.0' in scraped


def test_an_unwritable_state_directory_loses_nothing_and_the_daemon_says_so(tmp_path):
    state, aside = tmp_path / "state", tmp_path / "state.real"
    with running_supervising_daemon(tmp_path) as (process, _metrics, _worker, admin):
        with ControlClient(admin) as client:
            client.set({"max_batch_size": 8})
        saved = (state / "knobs.json").read_text()
        state.rename(aside)
        state.write_text("not a directory")  # every write below it now fails (ENOTDIR), even for root
        with ControlClient(admin) as client:
            applied = client.set({"max_batch_size": 16})  # still applied, kept in memory
        failing = worker_status(admin)
        human = run_cli("status", "--socket", str(admin)).stdout
        state.unlink()
        aside.rename(state)
        assert (state / "knobs.json").read_text() == saved  # the old file, whole
        with ControlClient(admin) as client:
            client.set({"streams": 2})
        recovered = worker_status(admin)
        assert process.poll() is None
    print(f"\nstate directory unwritable: {failing['state_error']}")
    assert applied == {"max_batch_size": 16} and failing["knobs"]["max_batch_size"] == 16
    assert "knobs.json" in failing["state_error"] and "state not saved" in human
    assert recovered["state_error"] is None
    workloads = json.loads((state / "knobs.json").read_text())["workloads"]
    assert next(iter(workloads.values())) == {"max_batch_size": 16, "streams": 2}


def test_saved_knobs_this_worker_refuses_are_skipped_and_forgotten_not_a_crash_loop(tmp_path):
    # Saved on a bigger machine, or by an older worker: a thread count above this host's CPUs,
    # a knob that no longer exists; the valid value still applies.
    workload = "resnet-mini|cpu|FP32[3,64,64]"
    (tmp_path / "state").mkdir()
    saved = {"max_batch_size": 8, "intra_op_threads": 999, "retired_knob": 3}
    (tmp_path / "state" / "knobs.json").write_text(
        json.dumps({"version": 1, "last_workload": workload, "workloads": {workload: saved}})
    )
    with running_supervising_daemon(tmp_path, device="cpu") as (_, _metrics, _worker, admin):
        status = worker_status(admin)
    log = (tmp_path / "daemon.log").read_text()
    kept = json.loads((tmp_path / "state" / "knobs.json").read_text())["workloads"][workload]
    assert status["state"] == "ready" and status["restarts"] == 0
    assert status["knobs"]["max_batch_size"] == 8 and status["knobs"]["intra_op_threads"] <= os.cpu_count()
    assert "saved knob skipped: intra_op_threads=999 is above its maximum" in log
    assert "outside what this worker (worker) accepts; forgetting them" in log
    assert kept == {"max_batch_size": 8}


def test_a_crash_loop_stops_the_restarts_and_the_daemon_stays_up(tmp_path):
    crashing = [sys.executable, "-c", "import sys; sys.exit(3)"]
    with running_supervising_daemon(tmp_path, wait_ready=False, command=crashing, crash_loop_exits=3) as (
        process,
        metrics,
        _w,
        admin,
    ):
        status = wait_for(lambda: (s := worker_status(admin))["state"] == "crash_loop" and s, 30, "the crash loop")
        time.sleep(1.0)
        later = worker_status(admin)
        scraped = http_get(metrics)
        human = run_cli("status", "--socket", str(admin))
        assert process.poll() is None
    assert status["restarts"] == 3 and later["restarts"] == 3
    assert status["last_exit_code"] == 3
    assert "crash loop: 3 exits within 60 s" in status["message"]
    assert 'gputuned_worker_crash_loop{worker="worker"} 1.0' in scraped and 'gputuned_worker_up{worker="worker"} 0.0' in scraped
    assert "crash_loop" in human.stdout and "not restarting" in human.stdout
    assert "crash loop" in (tmp_path / "daemon.log").read_text()


AGENT_WORKER = Path(__file__).parent / "agent_worker.py"


def test_restart_brings_one_worker_out_of_a_crash_loop_and_replaces_another_touching_no_other(tmp_path):
    marker = tmp_path / "broken"  # while it exists, the worker exits at once
    marker.touch()
    agent = f"{sys.executable} {AGENT_WORKER} --socket {{control_socket}}"
    flaky = ["sh", "-c", f"test -e {marker} && exit 3; exec {agent}"]
    steady = [sys.executable, str(AGENT_WORKER), "--socket", "{control_socket}"]
    workers = [
        {"name": "flaky", "listen": f"127.0.0.1:{free_port()}", "command": flaky, "crash_loop_exits": 3},
        {"name": "steady", "listen": f"127.0.0.1:{free_port()}", "command": steady},
        {"name": "bystander", "listen": f"127.0.0.1:{free_port()}", "command": steady},
    ]
    with running_supervising_daemon(tmp_path, wait_ready=False, workers=workers) as (process, _m, _w, admin):
        looping = wait_for(lambda: (s := worker_status(admin, "flaky"))["state"] == "crash_loop" and s, 30, "the crash loop")
        ready = {
            name: wait_for(lambda n=name: (s := worker_status(admin, n))["state"] == "ready" and s, 30, name)
            for name in ("steady", "bystander")
        }
        marker.unlink()
        restarted = run_cli("restart", "--socket", str(admin), "--worker", "flaky")
        back = wait_for(lambda: (s := worker_status(admin, "flaky"))["state"] == "ready" and s, 30, "flaky to serve again")
        replaced = run_cli("restart", "--socket", str(admin), "--worker", "steady")
        new_steady = wait_for(
            lambda: (s := worker_status(admin, "steady"))["state"] == "ready" and s["pid"] != ready["steady"]["pid"] and s,
            30,
            "steady to be replaced",
        )
        unknown = run_cli("restart", "--socket", str(admin), "--worker", "nope")
        bystander = worker_status(admin, "bystander")
        assert process.poll() is None
    assert "`gputuned restart --worker flaky`" in looping["message"]
    assert restarted.returncode == 0 and restarted.stdout.startswith("flaky: "), restarted.stderr
    assert back["pid"] is not None
    assert replaced.returncode == 0 and new_steady["restarts"] == ready["steady"]["restarts"] + 1
    assert unknown.returncode == 1 and "no worker named 'nope'" in unknown.stderr
    assert bystander["pid"] == ready["bystander"]["pid"] and bystander["restarts"] == ready["bystander"]["restarts"]
    assert "restarting worker flaky on request" in (tmp_path / "daemon.log").read_text()


def test_sigterm_under_load_drains_without_failing_accepted_requests(tmp_path):
    with running_supervising_daemon(tmp_path) as (process, _metrics, worker, _admin):
        thread, box = load_in_background(LoadPlan(url=worker, concurrency=8, requests=10**6, duration=8))
        time.sleep(2.0)
        signalled_at = time.perf_counter()
        elapsed = stop(process, signal.SIGTERM, timeout=60)
        thread.join(timeout=60)
    result = box["result"]
    failed_before = [kind for sent, kind in result.failures if sent < signalled_at]
    print(
        f"\nSIGTERM under load: daemon gone after {elapsed:.2f} s; {result.ok} ok; {len(failed_before)} sent before the "
        f"signal failed; after it: {dict(result.errors)} (refusals: the worker had stopped accepting)"
    )
    assert process.returncode == 0 and elapsed < 35
    assert failed_before == []
    log = (tmp_path / "daemon.log").read_text()
    assert "worker exited with code 0" in log and "stopped" in log


def test_accepted_knobs_survive_a_daemon_restart_and_a_corrupt_state_file_does_not_stop_it(tmp_path):
    with running_supervising_daemon(tmp_path) as (_, _metrics, _worker, admin), ControlClient(admin) as client:
        client.set({"max_batch_size": 12, "max_queue_delay_us": 500})
    state = json.loads((tmp_path / "state" / "knobs.json").read_text())
    assert state["workloads"]["resnet-mini|cpu|FP32[3,64,64]"] == {"max_batch_size": 12, "max_queue_delay_us": 500}
    with running_supervising_daemon(tmp_path) as (_, _metrics, _worker, admin):
        assert worker_status(admin)["knobs"]["max_batch_size"] == 12
        assert worker_status(admin)["knobs"]["max_queue_delay_us"] == 500
    (tmp_path / "state" / "knobs.json").write_text("{ not json")
    with running_supervising_daemon(tmp_path) as (_, _metrics, _worker, admin):
        assert worker_status(admin)["knobs"]["max_batch_size"] == 1
    assert list((tmp_path / "state").glob("knobs.json.corrupt-*"))
    assert "is unusable" in (tmp_path / "daemon.log").read_text()


def test_numa_placement_pins_the_worker_to_the_node(tmp_path):
    node0 = Path("/sys/devices/system/node/node0/cpulist").read_text().strip()
    with running_supervising_daemon(tmp_path, placement="0") as (_, metrics, _worker, admin):
        status = worker_status(admin)
        pid = status["pid"]
        allowed = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Cpus_allowed_list")]
        numa_maps = Path(f"/proc/{pid}/numa_maps").read_text()
        scraped = http_get(metrics)
    assert status["placement"] == {"node": 0, "cpus": node0}
    assert allowed == [f"Cpus_allowed_list:\t{node0}"]
    assert "prefer:0" in numa_maps  # the memory policy the shim set before exec
    assert f'gputuned_worker_placement_info{{cpus="{node0}",node="0",worker="worker"}} 1.0' in scraped


def test_sighup_reloads_a_valid_config_and_refuses_an_invalid_one(tmp_path):
    with running_supervising_daemon(tmp_path) as (process, metrics, _worker, _admin):
        config = tmp_path / "gputuned.toml"
        original = config.read_text()
        config.write_text(original + "\n[sampling]\ninterval_seconds = -5\n")
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in (tmp_path / "daemon.log").read_text(), 10, "the refusal")
        config.write_text(original + "\n[sampling]\ninterval_seconds = 0.5\n")
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in (tmp_path / "daemon.log").read_text(), 10, "the reload")
        assert process.poll() is None and http_get(metrics)
    assert "sampling.interval_seconds: -5.0 is out of range" in (tmp_path / "daemon.log").read_text()


def test_status_shows_the_worker_knobs_and_performance(tmp_path):
    # The tuner frozen: this is about what status shows, not what the tuner would change meanwhile.
    with running_supervising_daemon(tmp_path, tuning={"mode": "frozen"}) as (_, _metrics, worker, admin):
        asyncio.run(run_load(LoadPlan(url=worker, concurrency=4, requests=400, duration=30)))
        time.sleep(1.0)
        command = ["status", "--socket", str(admin)]
        human = run_cli(*command)
        machine = worker_entry(json.loads(run_cli(*command, "--json").stdout))
    assert human.returncode == 0
    assert "ready" in human.stdout and "resnet-mini" in human.stdout and "max_batch_size" in human.stdout
    assert "req/s" in human.stdout and "p99" in human.stdout
    assert machine["state"] == "ready" and machine["performance"]["throughput_per_second"] > 0
    assert machine["knobs"]["streams"] == 1
