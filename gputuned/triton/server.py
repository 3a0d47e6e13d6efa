"""Starting the `tritonserver` the adapter owns (supervised mode).

Triton runs as the adapter's child with explicit model control, its HTTP and metrics
ports on the configured (loopback by default) address, gRPC off unless the operator's
extra arguments turn it on, and latency summaries on (readings.py).
It inherits the adapter's CPU and NUMA placement. It is bound to the adapter's life with
PR_SET_PDEATHSIG, so a killed adapter (the daemon's hang detection uses SIGKILL) cannot
leave an orphaned server holding the port for the next one.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


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


def check_ports_free(host: str, ports: Sequence[int]) -> None:
    """OSError naming the port when one is taken. Triton binds its HTTP port with SO_REUSEPORT,
    so a second server on a taken port starts anyway and shares the requests with the first;
    this catches a stale server before that can happen."""
    for port in ports:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle; a listener is
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise OSError(exc.errno, f"port {host}:{port} is taken ({exc.strerror}); is another Triton running?") from None


def reap_orphans() -> None:
    """Makes this process the subreaper of its descendants, so the Python backend's stub
    processes of a server that died are handed to it (`kill_descendants`), not to init."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def kill_descendants() -> int:
    """SIGKILLs what is left below this process (stubs of a dead server); returns how many."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=5)
    return len(children)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the adapter's main thread dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def start_server(spec: ServerSpec, env: Mapping[str, str], device_indices: Sequence[int] | None) -> subprocess.Popen[bytes]:
    """Starts the server from the calling (main) thread: PR_SET_PDEATHSIG fires when the thread
    that forked exits. `device_indices` limits the GPUs it sees (None: as the adapter sees)."""
    environment = dict(env)
    if device_indices is not None:
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(str(index) for index in device_indices)
    return subprocess.Popen(server_command(spec), env=environment, preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)


def stop_server(process: subprocess.Popen[bytes], drain_seconds: float) -> int:
    """SIGTERM (Triton finishes the requests in flight, then exits), SIGKILL after `drain_seconds`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=drain_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
