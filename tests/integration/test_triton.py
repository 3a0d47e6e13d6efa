"""A real Triton Inference Server (2.51, from the nvidia-pytriton wheel that
scripts/install_triton.sh installs in .triton) tuned by the daemon, on the CPU.

Supervised: the daemon starts Triton through the adapter, reads it, tunes it under load
to a better goodput than its defaults with every decision logged and no failed request,
and restarts it with the accepted knobs after a `kill -9` and after it hangs (SIGSTOP). Attached: the adapter tunes a
Triton the test runs, with its repository API restricted to an access token, and puts the
accepted knobs back when that Triton is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gputuned.control.client import SLOW_SET_SECONDS, ControlClient
from gputuned.loadgen import LoadPlan, run_load
from gputuned.sweep import measure_point
from gputuned.testing.online import timed_load
from gputuned.testing.processes import (
    REPO_ROOT,
    free_port,
    freeze_tuner,
    run_cli,
    running_supervising_daemon,
    serving,
    stop,
    wait_for,
    worker_status,
)
from gputuned.triton.example import write_example
from gputuned.triton.model_config import knobs_of
from gputuned.triton.server import ServerSpec, server_command

pytestmark = pytest.mark.integration
SERVER = Path(os.environ.get("GPUTUNED_TRITON_SERVER", REPO_ROOT / ".triton" / "bin" / "tritonserver"))
MODEL = "resnet-mini"
SLO = 0.1
CLIENTS = 16


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert SERVER.exists(), f"{SERVER} is missing: run scripts/install_triton.sh (setup.sh --test does)"
    path = tmp_path_factory.mktemp("models")
    write_example(path, MODEL, 8)
    return path


def triton_config(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/v2/models/{MODEL}/config", timeout=5) as response:
        return json.loads(response.read())


def knobs_in(config: dict) -> tuple[int, int, int]:
    """(max_batch_size, instances, queue delay) as Triton holds them."""
    delay = (config.get("dynamic_batching") or {}).get("max_queue_delay_microseconds", 0)
    return config["max_batch_size"], config["instance_group"][0]["count"], delay


def tritonserver_under(adapter_pid: int) -> psutil.Process:
    return next(p for p in psutil.Process(adapter_pid).children() if p.name() == "tritonserver")


def test_the_daemon_tunes_a_supervised_triton_and_restarts_it_with_its_knobs(tmp_path, repository):
    worker = {
        "kind": "triton",
        "model": MODEL,
        "device": "cpu",
        "triton_server": str(SERVER),
        "triton_repository": str(repository),
        "ping_timeout_seconds": 10.0,
    }
    with running_supervising_daemon(tmp_path, tuning={"mode": "frozen", "slo_p99_ms": SLO * 1000}, **worker) as (
        _,
        metrics,
        url,
        admin,
    ):
        status = worker_status(admin)
        assert status["kind"] == "triton"
        assert status["knobs"] == {"max_batch_size": 1, "max_queue_delay_us": 0, "streams": 1}  # no dynamic batching
        measure_point(timed_load(url, 2, CLIENTS), SLO)  # warm-up
        _, default_goodput, _, default_errors = measure_point(timed_load(url, 6, CLIENTS), SLO)

        assert run_cli("tune", "--socket", str(admin), "--mode", "auto").returncode == 0
        online = asyncio.run(run_load(timed_load(url, 70, CLIENTS)))
        freeze_tuner(admin)  # a change on trial is reverted (a Triton reload): measure after it
        measure_point(timed_load(url, 2, CLIENTS), SLO)  # warm-up, as for the defaults
        _, tuned_goodput, _, tuned_errors = measure_point(timed_load(url, 6, CLIENTS), SLO)

        decisions = [json.loads(line) for line in (tmp_path / "state" / "decisions.jsonl").read_text().splitlines()]
        applied = [d for d in decisions if d["action"] == "apply"]
        assert applied and all(d["baseline"] for d in applied), "every change is logged with its evidence"
        assert {d["action"] for d in decisions} & {"keep", "revert"}
        assert default_errors == tuned_errors == 0
        assert not online.errors, f"tuning failed requests: {online.errors}"
        trail = [(d["knob"], d["action"], d["old"], d["new"]) for d in decisions]
        assert tuned_goodput > 1.15 * default_goodput, (default_goodput, tuned_goodput, trail)
        tuned = worker_status(admin)["knobs"]
        triton_holds = knobs_in(triton_config(url))
        assert triton_holds == (tuned["max_batch_size"], tuned["streams"], tuned["max_queue_delay_us"])
        exported = urllib.request.urlopen(metrics, timeout=5).read().decode()
        samples = [sample for family in text_string_to_metric_families(exported) for sample in family.samples]
        served = [s.value for s in samples if s.name == "gputuned_worker_requests_total" and s.labels["outcome"] == "ok"]
        assert served and served[0] > 0, "the daemon exports the Triton worker's requests"
        assert [s.labels["kind"] for s in samples if s.name == "gputuned_worker_info"] == ["triton"]

        # kill -9 Triton: the adapter exits, the daemon restarts both, and the knobs come back.
        server = tritonserver_under(worker_status(admin)["pid"])
        server.send_signal(signal.SIGKILL)
        wait_for(lambda: worker_status(admin)["restarts"] >= 1, 30, "the daemon to see the exit")
        wait_for(lambda: worker_status(admin)["state"] == "ready", 120, "Triton to be ready again")
        assert knobs_in(triton_config(url)) == triton_holds
        assert worker_status(admin)["knobs"] == tuned
        assert measure_point(timed_load(url, 2, CLIENTS), SLO)[3] == 0

        # SIGSTOP: Triton stops answering; the adapter kills it after its hang timeout (the
        # worker's ping timeout, 10 s), and the daemon starts both again with the knobs.
        restarts = worker_status(admin)["restarts"]
        hung_at = time.monotonic()
        tritonserver_under(worker_status(admin)["pid"]).send_signal(signal.SIGSTOP)
        wait_for(lambda: worker_status(admin)["restarts"] > restarts, 40, "the hung server to be replaced")
        assert time.monotonic() - hung_at >= 10.0
        wait_for(lambda: worker_status(admin)["state"] == "ready", 120, "Triton to be ready again")
        assert knobs_in(triton_config(url)) == triton_holds


@contextlib.contextmanager
def running_triton(repository: Path, port: int, *extra: str) -> Iterator[str]:
    """A Triton the test runs itself (what attach mode watches), started as the adapter starts
    one; yields its URL."""
    command = server_command(ServerSpec(str(SERVER), repository, MODEL, "127.0.0.1", port, port + 2, extra))
    url = f"http://127.0.0.1:{port}"
    with serving(command, repository.parent / f"triton-{port}.log", f"{url}/v2/models/{MODEL}/ready", stop_timeout=30):
        yield url


def test_attached_to_a_restricted_triton_it_tunes_with_the_token_and_survives_its_restarts(tmp_path, repository):
    port = free_port()
    restricted = "--http-restricted-api=model-repository:triton-access-token=s3cret"
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with running_triton(repository, port, restricted) as url:
        # The restricted index: a clear answer, not a traceback; naming the model works.
        listing = run_cli("load", url, "--requests", "5")
        assert listing.returncode == 2 and "name the model with --model" in listing.stderr, listing.stderr
        assert "Traceback" not in listing.stderr
        assert run_cli("load", url, "--model", MODEL, "--requests", "5").returncode == 0

        worker = {"kind": "triton", "model": MODEL, "listen": f"127.0.0.1:{port}", "ping_timeout_seconds": 10.0}
        no_token = tmp_path / "no-token"
        no_token.mkdir()
        # No mode in the config: a server the operator runs is tuned in recommend mode, changing nothing.
        with running_supervising_daemon(no_token, worker_port=port, **worker) as (_, _, _, admin):
            assert worker_status(admin)["tuner"]["mode"] == "recommend"
            refused = run_cli("set", "--socket", str(admin), "max_batch_size=4")
            assert refused.returncode == 1
            assert "restricted" in refused.stderr and "triton_access_token_file" in refused.stderr, refused.stderr
            assert knobs_in(triton_config(url)) == (8, 1, 0)  # unchanged

    # With the token, through Triton's restarts by its owner.
    with_token = tmp_path / "with-token"
    with_token.mkdir()
    worker["triton_access_token_file"] = str(token)
    with running_supervising_daemon(with_token, worker_port=port, wait_ready=False, tuning={"mode": "frozen"}, **worker) as (
        daemon,
        _,
        _,
        admin,
    ):
        with running_triton(repository, port, restricted) as url:
            wait_for(lambda: worker_status(admin)["state"] == "ready", 60, "the adapter to attach")
            with ControlClient(admin) as client:
                applied = client.set({"max_batch_size": 4, "streams": 2}, timeout=SLOW_SET_SECONDS)
            assert applied == {"max_batch_size": 4, "streams": 2}
            assert knobs_in(triton_config(url)) == (4, 2, 0)
        # Its owner restarts it with the repository's config; the adapter puts the accepted knobs back.
        with running_triton(repository, port, restricted) as url:
            wait_for(lambda: knobs_in(triton_config(url)) == (4, 2, 0), 60, "the accepted knobs to be re-applied")
            assert worker_status(admin)["knobs"]["max_batch_size"] == 4
        assert daemon.poll() is None and worker_status(admin)["restarts"] == 0


def accepted_knobs(state: Path, original: dict[str, int]) -> dict[str, int]:
    """The knobs the daemon last accepted (kept) for the model: the original, changed by what it saved."""
    workloads = json.loads((state / "knobs.json").read_text())["workloads"] if (state / "knobs.json").exists() else {}
    return {**original, **next(iter(workloads.values()), {})}


@pytest.fixture(scope="module")
def attached_triton(repository: Path) -> Iterator[str]:
    """One Triton the stop tests attach to in turn; each starts from the knobs the last left."""
    with running_triton(repository, free_port()) as url:
        yield url


def _settled(status: dict) -> bool:
    return not status["applying"] and not status["tuner"]["trial_active"]


# When to stop the daemon, read from its status (polled every 0.1 s); a change's set reloads
# Triton's model (seconds), and its warm-up, trial and confirmation last seconds each.
MOMENTS = {
    "before the first set": lambda s: _settled(s) and s["performance"] is not None,
    "while a trial's set is in flight": lambda s: s["applying"] and not s["tuner"]["trial_active"],
    "in the warm-up": lambda s: s["tuner"]["phase"] == "warmup" and not s["applying"],
    "in the trial": lambda s: s["tuner"]["phase"] == "trial" and not s["applying"],
    "in the confirmation": lambda s: s["tuner"]["phase"] == "confirm" and not s["applying"],
    # A set while a change is on trial puts the old values back: a revert, or a confirmation's switch.
    "during a revert": lambda s: s["applying"] and s["tuner"]["trial_active"],
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_stopping_the_daemon_at_any_point_of_a_trial_leaves_an_attached_triton_with_the_accepted_knobs(
    tmp_path, attached_triton, moment
):
    url = attached_triton
    port = int(url.rsplit(":", 1)[1])
    worker = {"kind": "triton", "model": MODEL, "listen": f"127.0.0.1:{port}", "mode": "auto", "ping_timeout_seconds": 10.0}
    # The widest doubt band (min_margin at its top) and an SLO that no step breaks: most
    # verdicts go through a confirmation rather than a revert for harm.
    tuning = {"min_margin": 0.1, "slo_p99_ms": 10_000}
    # As the adapter reads them: a config without dynamic batching runs batches of one.
    original = knobs_of(triton_config(url))
    stop_load = threading.Event()
    plan = LoadPlan(url=url, model=MODEL, concurrency=CLIENTS, requests=10**9, duration=360, stop=stop_load)
    load = threading.Thread(target=lambda: asyncio.run(run_load(plan)))
    with running_supervising_daemon(tmp_path, worker_port=port, tuning=tuning, **worker) as (daemon, _, _, admin):
        load.start()
        try:
            # A change is a reload of seconds; the moment comes within a few trials (bounded well above).
            wait_for(lambda: MOMENTS[moment](worker_status(admin)), 300, moment)
            stop(daemon, signal.SIGTERM, timeout=90)
        finally:
            stop_load.set()
            load.join(timeout=60)
    log = (tmp_path / "daemon.log").read_text()
    assert daemon.returncode == 0 and "Traceback" not in log, log[-3000:]
    assert knobs_of(triton_config(url)) == accepted_knobs(tmp_path / "state", original), log[-3000:]
    decisions_file = tmp_path / "state" / "decisions.jsonl"
    decisions = [json.loads(line) for line in decisions_file.read_text().splitlines()] if decisions_file.exists() else []
    if moment == "before the first set":
        assert not decisions or decisions[-1]["action"] != "apply", decisions[-3:]
    elif moment == "during a revert":
        assert decisions[-1]["action"] == "revert", decisions[-3:]
    else:  # caught with a change in force: it is put back as the daemon stops
        assert decisions[-1]["action"] == "revert" and "the daemon is stopping" in decisions[-1]["reason"], decisions[-3:]


def test_accepted_knobs_are_written_back_to_the_model_repository(tmp_path, repository):
    models = tmp_path / "models"
    shutil.copytree(repository, models)
    config_file = models / MODEL / "config.pbtxt"
    operators_file = config_file.read_text()
    port = free_port()
    worker = {
        "kind": "triton",
        "model": MODEL,
        "listen": f"127.0.0.1:{port}",
        "triton_repository": str(models),
        "triton_write_back": True,
    }
    url = f"http://127.0.0.1:{port}"
    with (
        running_triton(models, port),
        running_supervising_daemon(tmp_path, worker_port=port, tuning={"mode": "frozen"}, **worker) as (_, _, _, admin),
    ):
        assert run_cli("set", "--socket", str(admin), "max_batch_size=4", "streams=2").returncode == 0
        assert knobs_in(triton_config(url)) == (4, 2, 0)
        assert config_file.with_name("config.pbtxt.previous").read_text() == operators_file
        written = config_file.read_text()
        assert "max_batch_size: 4" in written and "count: 2" in written, written
    # Its owner restarts Triton from the repository, without gputuned: it runs the accepted knobs.
    with running_triton(models, port):
        assert knobs_in(triton_config(url)) == (4, 2, 0)
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()


def test_attaching_to_a_triton_without_explicit_model_control_says_how_to_start_it(tmp_path, repository):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spec = ServerSpec(str(SERVER), repository, MODEL, "127.0.0.1", port, port + 2)
    # Triton's default: model control NONE, every model of the repository loaded at start.
    command = [arg for arg in server_command(spec) if not arg.startswith(("--model-control-mode", "--load-model"))]
    worker = {"kind": "triton", "model": MODEL, "listen": f"127.0.0.1:{port}", "mode": "auto", "crash_loop_exits": 1}
    with serving(command, tmp_path / "triton.log", f"{url}/v2/models/{MODEL}/ready", stop_timeout=30):
        with running_supervising_daemon(tmp_path, worker_port=port, wait_ready=False, **worker) as (daemon, _, _, admin):
            status = wait_for(lambda: (s := worker_status(admin))["state"] == "crash_loop" and s, 90, "the adapter to stop")
            assert daemon.poll() is None
        assert knobs_in(triton_config(url)) == (8, 1, 0)  # nothing was changed
    log = (tmp_path / "daemon.log").read_text()
    assert "start it with --model-control-mode=explicit" in log, log[-3000:]
    assert "Traceback" not in log and "`gputuned restart --worker worker`" in status["message"]
