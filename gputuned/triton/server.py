"""The `tritonserver` command the adapter starts (supervised mode).

Triton runs with explicit model control, its HTTP and metrics ports on the configured
(loopback by default) address, gRPC off unless the operator's extra arguments turn it on,
and latency summaries on (readings.py). `adapting.process` starts and stops it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerSpec:
    binary: str
    repository: Path
    model: str
    host: str
    http_port: int
    metrics_port: int
    extra_args: tuple[str, ...] = ()


def server_command(spec: ServerSpec) -> list[str]:
    return [
        spec.binary,
        f"--model-repository={spec.repository}",
        "--model-control-mode=explicit",
        f"--load-model={spec.model}",
        f"--http-address={spec.host}",
        f"--http-port={spec.http_port}",
        f"--metrics-address={spec.host}",
        f"--metrics-port={spec.metrics_port}",
        "--allow-grpc=false",
        "--log-verbose=0",
        "--metrics-config=summary_latencies=true",
        *spec.extra_args,
    ]
