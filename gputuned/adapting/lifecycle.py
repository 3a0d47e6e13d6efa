"""The life of an adapter process: a server's model as a gputuned worker.

The daemon starts and supervises an adapter as it does the built-in worker (placement,
restarts with backoff, hang detection, drain, adoption after a daemon restart), so a kind
built on it needs nothing new in the daemon. In supervised mode the adapter starts the
server as its child and lives exactly as long as it: when the server exits or stops
answering for the hang timeout, the adapter stops it and exits 1, and the daemon starts
both again with the accepted knobs; SIGTERM drains the server (it finishes the requests in
flight) before the adapter exits. In attach mode it tunes a server that someone else runs
and outlives it: while the server is away the stats stand still, and when it answers again
the worker puts the accepted knobs back.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gputuned.adapting.process import check_ports_free, kill_descendants, reap_orphans, start_server, stop_server
from gputuned.control.server import ControlHandler, ControlServer, ServerThread

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how often the server is read; the control socket streams stats at the same pace


class ServerError(Exception):
    """A call to the server failed; the message names the call and the server's reason."""


class PolledWorker(ControlHandler, Protocol):
    def poll(self) -> bool:
        """Reads the server once into the stats snapshot; False when it did not answer."""
        ...


@dataclass(frozen=True)
class OwnedServer:
    """A server the adapter starts (supervised mode)."""

    name: str  # for the log: "tritonserver", "vLLM"
    command: Sequence[str]
    env: dict[str, str]
    devices: Sequence[int] | None  # the GPUs it may see (None: as the adapter sees)
    host: str
    ports: Sequence[int]  # checked free before the start
    drain_seconds: float


@dataclass(frozen=True)
class AdapterRun:
    """What one adapter process does, whatever the kind."""

    control_socket: Path
    control_group: int | None
    ready: Callable[[], bool]  # the server answers and serves the model
    what: str  # "model resnet-mini at http://...": for the log
    ready_timeout: float
    hang_timeout: float


def run(
    adapter: AdapterRun,
    server: OwnedServer | None,
    attach: Callable[[], PolledWorker],
    answers: Callable[[], bool],
) -> int:
    """Starts the server (supervised), waits until it is ready, attaches the worker (which
    raises ServerError when it cannot), serves the control socket and watches the server
    until SIGTERM (0) or the server's end (1). `answers` says whether the server is ready
    now (its health), for hang detection."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    process = None
    if server is not None:
        try:
            check_ports_free(server.host, server.ports)
        except OSError as exc:
            log.error("cannot start %s: %s", server.name, exc.strerror)
            return 1
        reap_orphans()
        process = start_server(server.command, server.env, server.devices)
        log.info("started %s pid %d", server.name, process.pid)
    try:
        if not _wait_ready(adapter, process, stop):
            return 1 if not stop.is_set() else 0
        worker = attach()
        control = ServerThread(
            ControlServer(adapter.control_socket, worker, group=adapter.control_group, stats_interval=POLL_SECONDS),
            "gputuned-adapter-control",
        )
        control.start()
        log.info("control socket listening on %s; tuning %s", adapter.control_socket, adapter.what)
        watch = threading.Thread(target=_watch, args=(worker, answers, process, adapter.hang_timeout, stop), daemon=True)
        watch.start()
        code = _serve(process, stop)
        control.stop()
        return code
    except ServerError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:  # the control socket could not be bound
        log.error("cannot serve the control socket %s: %s", adapter.control_socket, exc)
        return 1
    finally:
        if process is not None and server is not None:
            stop_server(process, server.drain_seconds)
            if left := kill_descendants():
                log.warning("killed %d process(es) the server left behind", left)


def _wait_ready(adapter: AdapterRun, process: subprocess.Popen[bytes] | None, stop: threading.Event) -> bool:
    deadline = time.monotonic() + adapter.ready_timeout
    while not adapter.ready():
        if process is not None and process.poll() is not None:
            log.error("the server exited with code %s before %s was ready", process.returncode, adapter.what)
            return False
        if time.monotonic() > deadline:
            log.error("%s was not ready within %.0f s", adapter.what, adapter.ready_timeout)
            return False
        if stop.wait(0.2):
            return False
    return True


def _watch(
    worker: PolledWorker,
    answers: Callable[[], bool],
    process: subprocess.Popen[bytes] | None,
    hang_timeout: float,
    stop: threading.Event,
) -> None:
    """Reads the server every POLL_SECONDS; a started server that stays silent or not ready
    for `hang_timeout` is killed (the main thread then sees it exit)."""
    last_answer = time.monotonic()
    while not stop.wait(POLL_SECONDS):
        if worker.poll() and answers():
            last_answer = time.monotonic()
        elif process is not None and time.monotonic() - last_answer > hang_timeout and process.poll() is None:
            log.error("the server was not ready or did not answer for %.0f s; killing it", hang_timeout)
            process.kill()


def _serve(process: subprocess.Popen[bytes] | None, stop: threading.Event) -> int:
    """Until SIGTERM (0) or the started server's exit (1)."""
    while not stop.wait(0.2):
        if process is not None and process.poll() is not None:
            log.error("the server exited with code %s", process.returncode)
            stop.set()
            return 1
    return 0
