"""The GPU check (bench/gpu.py) run here: its monitoring phase against the real daemon with the
fake NVML and a fake nvidia-smi, passing when the two agree and failing loudly when they do
not; the phases that need CUDA refuse to start without it."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from gputuned.testing.processes import REPO_ROOT

FAKE = ("--nvml-module", "gputuned.testing.fake_nvml:hgx8", "--smi", f"{sys.executable} -m gputuned.testing.fake_nvidia_smi")
QUICK = ("--reads", "2", "--quiet", "1", "--scrapes", "20")


def gpu_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "bench/gpu.py", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
    )


def test_the_monitor_phase_passes_when_the_daemon_and_nvidia_smi_agree_and_lists_refused_readings():
    done = gpu_check("--phases", "monitor", *FAKE, *QUICK, env={"GPUTUNED_FAKE_UNSUPPORTED": "nvmlDeviceGetPowerUsage"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "GPU 7: utilization.gpu 87/87, memory.used 20480/20480, memory.total 81920/81920" in done.stdout
    assert "power.draw None/None" in done.stdout  # refused by the driver: nvidia-smi says [N/A], the daemon has none
    assert "NVML readings the driver refused: GPU 0 nvmlDeviceGetPowerUsage, GPU 1 nvmlDeviceGetPowerUsage" in done.stdout
    assert "daemon CPU: " in done.stdout and "scrape latency: p50 " in done.stdout
    assert done.stdout.rstrip().endswith("every check passed")


def test_the_monitor_phase_fails_on_a_field_that_disagrees():
    done = gpu_check("--phases", "monitor", *FAKE, *QUICK, env={"GPUTUNED_FAKE_SMI_SKEW": "temperature.gpu=10"})
    assert done.returncode == 1
    assert "FAIL: GPU 3 temperature.gpu: 61.0 against nvidia-smi's 71.0 (allowed +-3.0) in 2 of 2 reads" in done.stdout
    assert done.stdout.rstrip().endswith("8 checks failed")


def test_the_phases_on_the_gpu_need_one():
    if torch.cuda.is_available():
        return  # on a GPU host the phases run: nothing to refuse
    done = gpu_check("--phases", "worker,oom")
    assert done.returncode == 2 and "phases worker, oom need CUDA device 0; none here" in done.stderr
    assert "unknown phase 'gpus'" in gpu_check("--phases", "gpus").stderr
