"""`gputuned run --no-worker` as a real process: serves /metrics, passes promtool, stops on signals."""

from __future__ import annotations

import signal
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gputuned.testing.processes import REPO_ROOT, free_port, http_get, run_cli, running_daemon, stop

pytestmark = pytest.mark.integration
FAKE_HGX = "gputuned.testing.fake_nvml:hgx8"


def test_on_this_gpu_less_machine_nvml_reports_failure_and_the_rest_flows(promtool):
    with running_daemon() as (_, url):
        text = http_get(url)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout + result.stderr
    families = {f.name: f for f in text_string_to_metric_families(text)}
    success = {s.labels["collector"]: s.value for s in families["gputuned_collector_success"].samples}
    assert success == {"nvml": 0.0, "gpm": 0.0, "pcie": 0.0, "numa": 1.0, "host": 1.0, "kubelet": 1.0}
    assert "gputuned_vmstat_pgfault" in families
    assert "gputuned_host_memory_total_bytes" in families


def test_with_eight_fake_gpus_the_real_output_passes_promtool(promtool):
    with running_daemon("--nvml-module", FAKE_HGX) as (_, url):
        text = http_get(url)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout + result.stderr
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert len(families["gputuned_gpu_info"].samples) == 8


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly_within_two_seconds(sig):
    with running_daemon("--nvml-module", FAKE_HGX) as (process, _):
        elapsed = stop(process, sig)
        stderr = process.stderr.read()
    assert process.returncode == 0, stderr
    assert elapsed < 2.0
    assert f"received {signal.Signals(sig).name}, stopping" in stderr and "stopped" in stderr


def test_an_invalid_config_is_refused_before_starting(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[sampling]\ninterval_seconds = -1\n")
    result = run_cli("run", "--no-worker", "--config", str(bad))
    assert result.returncode == 2
    assert "sampling.interval_seconds: -1.0 is out of range; allowed 0.1..3600.0" in result.stderr


def test_check_config_accepts_the_example_and_refuses_a_typo(tmp_path):
    assert run_cli("check-config", "--config", str(REPO_ROOT / "systemd" / "gputuned.toml")).returncode == 0
    typo = tmp_path / "typo.toml"
    typo.write_text("[collectors]\nnmva = true\n")
    result = run_cli("check-config", "--config", str(typo))
    assert (
        result.returncode == 2
        and "collectors.nmva: unknown key; allowed keys: nvml, gpm, pcie, numa, host, kubelet" in result.stderr
    )


def test_a_busy_port_is_a_clear_error(tmp_path):
    with running_daemon() as (_, url):
        port = url.split(":")[2].split("/")[0]
        result = run_cli("run", "--no-worker", "--metrics-listen", f"127.0.0.1:{port}", "--runtime-dir", str(tmp_path))
    assert result.returncode == 1
    assert f"cannot start: Address already in use (127.0.0.1:{port})" in result.stderr


def test_an_unloadable_nvml_binding_is_a_clear_error(tmp_path):
    result = run_cli(
        "run",
        "--no-worker",
        "--metrics-listen",
        f"127.0.0.1:{free_port()}",
        "--nvml-module",
        "no_such_module",
        "--runtime-dir",
        str(tmp_path),
    )
    assert result.returncode == 2
    assert "cannot load the NVML binding nvml.module='no_such_module'" in result.stderr


def test_watching_a_pid_needs_no_worker():
    result = run_cli("run", "--metrics-listen", f"127.0.0.1:{free_port()}", "--worker-pid", "1")
    assert result.returncode == 2 and "add --no-worker" in result.stderr
