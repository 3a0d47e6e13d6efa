"""The server process an adapter owns (a supervised Triton or vLLM), from its start to its end.

The server runs as the adapter's child and inherits its CPU and NUMA placement. It is bound
to the adapter's life with PR_SET_PDEATHSIG, so a killed adapter (the daemon's hang
detection uses SIGKILL) cannot leave an orphaned server holding the port for the next one;
and the adapter is the subreaper of what the server starts (Triton's Python backend stubs,
vLLM's engine core and workers), so nothing it leaves behind outlives the adapter.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence

import psutil

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def device_indices(device: str) -> list[int] | None:
    """The GPUs a started server may see: cuda:N -> [N]; cpu -> none; auto -> as the adapter sees."""
    if device == "cpu":
        return []
    if device.startswith("cuda:") and device[5:].isdigit():
        return [int(device[5:])]
    return None


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
                raise OSError(exc.errno, f"port {host}:{port} is taken ({exc.strerror}); is another server running?") from None


def reap_orphans() -> None:
    """Makes this process the subreaper of its descendants, so what a server that died left
    running is handed to it (`kill_descendants`), not to init."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def kill_descendants() -> int:
    """SIGKILLs what is left below this process (a dead server's helpers); returns how many."""
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


def start_server(command: Sequence[str], env: Mapping[str, str], device_indices: Sequence[int] | None) -> subprocess.Popen[bytes]:
    """Starts the server from the calling (main) thread: PR_SET_PDEATHSIG fires when the thread
    that forked exits. `device_indices` limits the GPUs it sees (None: as the adapter sees)."""
    environment = dict(env)
    if device_indices is not None:
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(str(index) for index in device_indices)
    return subprocess.Popen(list(command), env=environment, preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)


def stop_server(process: subprocess.Popen[bytes], drain_seconds: float) -> int:
    """SIGTERM (the server finishes the requests in flight, then exits), SIGKILL after `drain_seconds`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=drain_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
