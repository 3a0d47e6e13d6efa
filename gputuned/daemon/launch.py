"""How a worker is started: its command line, environment and readiness probe.

The built-in worker (`gputuned worker`) gets its settings from the `[worker]` table and the
last accepted knobs of its workload as `--saved-knob` (skipped by the worker if it refuses
one, never a crash loop); a user's own server (`command`) is run as written, with the
control socket's path in its environment and in place of '{control_socket}'.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gputuned.config import WorkerConfig, parse_listen_address

# A Triton set reloads the model: seconds for a small model under load, far longer for a
# large one. Past this, the adapter counts as hung.
TRITON_RELOAD_SECONDS = 120.0


@dataclass(frozen=True)
class WorkerLaunch:
    name: str  # the worker's name in the config, for messages that tell the operator what to do
    command: Callable[[], list[str]]  # built at each start: the last accepted knobs go along
    control_socket: Path
    ready_url: str | None  # the built-in worker's HTTP readiness; None: ready once connected
    env: dict[str, str] = field(default_factory=dict)
    set_timeout: float = 0.0  # how long a set may take when longer than the ping timeout (a Triton reload)


def worker_gpu(device: str, gpu_count: int) -> int | None:
    """The NVML index of the worker's GPU: cuda:N -> N; auto -> 0 when there are GPUs."""
    if device == "cpu":
        return None
    if device.startswith("cuda"):
        _, _, index = device.partition(":")
        return int(index) if index.isdigit() else 0
    return 0 if gpu_count else None


def builtin_worker_command(worker: WorkerConfig, control_socket: Path, knobs: Mapping[str, int]) -> list[str]:
    command = [sys.executable, "-m", "gputuned", "worker", "--listen", worker.listen, "--control-socket", str(control_socket)]
    command += ["--model", worker.model, "--input-dtype", worker.input_dtype]
    if worker.device != "auto":
        command += ["--device", worker.device]
    if worker.input_shape:
        command += ["--input-shape", worker.input_shape]
    for text in worker.inputs:
        command += ["--input", text]
    if worker.max_length:
        command += ["--max-length", str(worker.max_length)]
    if worker.gpu_memory_fraction < 1.0:
        command += ["--gpu-memory-fraction", str(worker.gpu_memory_fraction)]
    return command + _shared_arguments(worker, knobs)


def triton_adapter_command(
    worker: WorkerConfig, control_socket: Path, knobs: Mapping[str, int], drain_seconds: float
) -> list[str]:
    """The adapter that makes a Triton model a worker (gputuned/triton/adapter.py). It drains
    its server a little within the daemon's own drain timeout."""
    command = [sys.executable, "-m", "gputuned", "triton-adapter", "--model", worker.model, "--url", base_url(worker.listen)]
    command += ["--control-socket", str(control_socket), "--device", worker.device]
    command += ["--hang-timeout", f"{worker.ping_timeout_seconds:g}", "--drain-timeout", f"{max(drain_seconds - 1, 0):g}"]
    if worker.triton_repository:
        command += ["--repository", worker.triton_repository]
    if worker.triton_server:
        command += ["--server", worker.triton_server]
        command += [f"--server-arg={word}" for word in worker.triton_args]
    if worker.triton_write_back:
        command += ["--write-back"]
    if worker.triton_metrics_url:
        command += ["--metrics-url", worker.triton_metrics_url]
    if worker.triton_access_token_file:
        command += ["--access-token-file", worker.triton_access_token_file]
    return command + _shared_arguments(worker, knobs)


def vllm_adapter_command(worker: WorkerConfig, control_socket: Path, knobs: Mapping[str, int], cache_dir: Path) -> list[str]:
    """The adapter that makes a vLLM server a worker (gputuned/vllm/adapter.py). A started vLLM's
    plugin listens beside the worker's control socket, and its caches go under `cache_dir`."""
    command = [sys.executable, "-m", "gputuned", "vllm-adapter", "--model", worker.model, "--url", base_url(worker.listen)]
    command += ["--control-socket", str(control_socket), "--device", worker.device]
    command += [
        "--hang-timeout",
        f"{worker.ping_timeout_seconds:g}",
        "--drain-timeout",
        f"{max(worker.drain_timeout_seconds - 1, 0):g}",
    ]
    if worker.vllm_python:
        command += ["--python", worker.vllm_python, "--plugin-socket", str(vllm_plugin_socket(control_socket))]
        command += ["--cache-dir", str(cache_dir)]
        command += [f"--server-arg={word}" for word in worker.vllm_args]
    elif worker.vllm_plugin_socket:
        command += ["--plugin-socket", worker.vllm_plugin_socket]
    return command + _shared_arguments(worker, knobs)


def vllm_plugin_socket(control_socket: Path) -> Path:
    """Where a started vLLM's plugin listens: beside the worker's control socket."""
    return control_socket.with_name(f"{control_socket.stem}-vllm.sock")


def _shared_arguments(worker: WorkerConfig, knobs: Mapping[str, int]) -> list[str]:
    """What every worker command takes alike: the control socket's group and the accepted knobs."""
    words = ["--control-group", worker.control_group] if worker.control_group else []
    for name, value in sorted(knobs.items()):
        words += ["--saved-knob", f"{name}={value}"]
    return words


def base_url(listen: str) -> str:
    host, port = parse_listen_address(listen)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def ready_url(listen: str) -> str:
    return f"{base_url(listen)}/v2/health/ready"


def worker_launch(
    worker: Callable[[], WorkerConfig],
    control_socket: Path,
    saved_knobs: Callable[[], Mapping[str, int]],
    cache_dir: Path,
) -> WorkerLaunch:
    """The launch of a configured worker. `worker` returns the current [worker] table (a reload
    takes effect at the next start); `saved_knobs` the last accepted knobs of its workload;
    `cache_dir` is where a server gputuned starts may write its caches (its state directory)."""

    def command() -> list[str]:
        config = worker()
        if config.command:
            return [word.replace("{control_socket}", str(control_socket)) for word in config.command]
        if config.kind == "triton":
            return triton_adapter_command(config, control_socket, saved_knobs(), config.drain_timeout_seconds)
        if config.kind == "vllm":
            return vllm_adapter_command(config, control_socket, saved_knobs(), cache_dir)
        return builtin_worker_command(config, control_socket, saved_knobs())

    config = worker()
    probes = {
        "triton": f"{base_url(config.listen)}/v2/models/{config.model}/ready",
        "vllm": f"{base_url(config.listen)}/health",
    }
    probe = probes.get(config.kind, ready_url(config.listen))
    return WorkerLaunch(
        name=config.name,
        command=command,
        control_socket=control_socket,
        ready_url=None if config.command else probe,
        # NVML numbers GPUs in PCI bus order; make CUDA agree so cuda:N is NVML's GPU N.
        env={"GPUTUNED_CONTROL_SOCKET": str(control_socket), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
        set_timeout=TRITON_RELOAD_SECONDS if config.kind == "triton" else 0.0,
    )
