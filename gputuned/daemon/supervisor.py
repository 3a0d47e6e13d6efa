"""The supervisor: starts one worker, watches it, restarts it, and drains it.

It runs one thread that owns the worker process and the control connection:

    STARTING --connected (and HTTP ready)--> READY
    STARTING --a hello that breaks the protocol--> PROTOCOL_ERROR (left running, not tuned;
               the connection is retried every PROTOCOL_RETRY_SECONDS)
    STARTING/READY/PROTOCOL_ERROR --exit--> BACKOFF --delay--> STARTING
    BACKOFF --too many exits in the window--> CRASH_LOOP (no more restarts; daemon stays up)
    any running state or CRASH_LOOP --restart()--> drained (SIGTERM) --> STARTING, the crash
               loop's count forgotten (`gputuned restart --worker NAME`)
    READY --no pong / no message within the ping timeout--> killed (SIGKILL) --exit--> BACKOFF
    any --stop()--> STOPPING (SIGTERM: the worker drains) --exit or drain timeout (SIGKILL)--> STOPPED

Before its first start it looks for a worker that a previous daemon left running (one
answering on the control socket) and adopts it rather than starting a second one.

Locks. `_lock` guards the state `status()` publishes and is never held across I/O or a
wait, so sampling, scrapes, `gputuned status` and the systemd watchdog, which only call
`status()`, never wait on the worker. `_io` serialises the control connection: the
supervisor's stats reads and pings, and `set_knobs` from the tuning job or the admin
socket. A set is all-or-nothing on the worker's side; after a refused one the supervisor
re-reads the worker's knobs, so its view and the worker's never diverge.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gputuned.control.client import ControlClient, ControlError, ControlProtocolError, ControlTimeout
from gputuned.control.messages import StatsReport, read_stats
from gputuned.daemon.adopted import AdoptedProcess
from gputuned.daemon.history import StatsHistory
from gputuned.daemon.launch import WorkerLaunch
from gputuned.daemon.placement import Placement, shim_command
from gputuned.daemon.restarts import RestartPlan, RestartPolicy

log = logging.getLogger(__name__)

PROTOCOL_RETRY_SECONDS = 5.0
IO_POLL_SECONDS = 0.05  # how long the supervisor waits for a message or for the connection when a set holds it


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    PROTOCOL_ERROR = "protocol_error"
    BACKOFF = "backoff"
    CRASH_LOOP = "crash_loop"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class WorkerStatus:
    """A consistent view of the supervised worker for collectors, status and sd_notify.
    Times are monotonic seconds."""

    state: WorkerState
    pid: int | None
    restarts: int
    last_exit_code: int | None
    started_at: float | None
    hello: dict[str, Any] | None
    knobs: dict[str, int]
    stats: StatsReport | None
    stats_at: float | None
    placement: Placement | None
    message: str
    applying: dict[str, int] = field(
        default_factory=dict
    )  # a set sent to the worker and not yet answered (a Triton reload takes seconds)


class Supervisor:
    def __init__(
        self,
        launch: WorkerLaunch,
        policy: RestartPolicy,
        placement: Placement | None,
        history: StatsHistory,
        on_hello: Callable[[dict[str, Any]], dict[str, int]],
        on_applied: Callable[[dict[str, Any], dict[str, int]], None],
        rng: random.Random | None = None,
    ) -> None:
        """`history` receives the worker's stats reports; `on_hello(hello)` returns the knobs to
        (re-)apply to a newly connected worker; `on_applied(hello, knobs)` records knobs the
        worker acknowledged."""
        self._launch = launch
        self._policy = policy
        self._placement = placement
        self._history = history
        self._on_hello = on_hello
        self._on_applied = on_applied
        self._restart_plan = RestartPlan(policy, rng)
        self._lock = threading.Lock()  # the published state below; never held across I/O
        self._io = threading.Lock()  # the control connection
        self._process: subprocess.Popen[bytes] | AdoptedProcess | None = None
        self._client: ControlClient | None = None
        self._first_start = True
        self._state = WorkerState.STARTING
        self._message = "starting"
        self._pid: int | None = None
        self._restarts = 0
        self._last_exit_code: int | None = None
        self._started_at: float | None = None
        self._hello: dict[str, Any] | None = None
        self._knobs: dict[str, int] = {}
        self._applying: dict[str, int] = {}
        self._next_start = 0.0
        self._connect_deadline = 0.0
        self._last_message = 0.0
        self._unanswered: str | None = None  # why the worker is hung, when a set found it so (under _io)
        self._last_ping = 0.0
        self._restart_requested = False  # under _lock: restart() asks, the supervisor thread does it
        self._protocol_complaint = ""
        self._stop = threading.Event()
        self._ready_event = threading.Event()
        self._thread: threading.Thread | None = None

    # --- public, thread-safe ----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gputuned-supervisor", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """True once the worker is ready (or given up on: see status().state)."""
        return self._ready_event.wait(timeout)

    def status(self) -> WorkerStatus:
        latest = self._history.latest()
        with self._lock:
            return WorkerStatus(
                state=self._state,
                pid=self._pid,
                restarts=self._restarts,
                last_exit_code=self._last_exit_code,
                started_at=self._started_at,
                hello=self._hello,
                knobs=dict(self._knobs),
                stats=latest[1] if latest else None,
                stats_at=latest[0] if latest else None,
                placement=self._placement,
                message=self._message,
                applying=dict(self._applying),
            )

    def set_knobs(self, changes: dict[str, int], persist: bool = True) -> dict[str, int]:
        """Sends a set to the worker; returns what it applied. ControlError if refused or not connected.

        `persist` records the values as accepted (the tuner's trials are not, until kept)."""
        if not self._io.acquire(timeout=self._policy.ping_timeout):
            raise ControlError(f"the worker's control connection stayed busy for {self._policy.ping_timeout:g} s")
        try:
            client = self._client
            with self._lock:
                hello, state, message = self._hello, self._state, self._message
            if client is None or hello is None:
                raise ControlError(f"the worker is not connected ({state.value}: {message})")
            set_timeout = self._set_timeout()
            with self._lock:
                self._applying = dict(changes)
            try:
                applied = client.set(changes, timeout=set_timeout)
            except ControlTimeout:
                # As a ping left unanswered: the worker is hung, and the watch, which left it to
                # the set while the set waited, kills it at its next look.
                self._unanswered = f"no answer to a set within {set_timeout:g} s"
                raise ControlError(f"the worker did not answer the set within {set_timeout:g} s") from None
            except ControlError:
                self._last_message = time.monotonic()  # it answered, with a refusal
                self._reread_knobs(client)
                raise
            self._last_message = time.monotonic()
            with self._lock:
                self._knobs.update(applied)
        finally:
            with self._lock:
                self._applying = {}
            self._io.release()
        if persist:
            self._on_applied(hello, applied)
        return applied

    def report_accepted(self, knobs: dict[str, int]) -> None:
        """Tells the worker which knob values are now the accepted ones (a kept trial, a hand
        set), for a server that keeps a config of its own (Triton's write-back). Best effort: a
        refusal or a busy connection is logged, never raised; the daemon's own record is the
        knob store."""
        if not self._io.acquire(timeout=self._policy.ping_timeout):
            log.warning("%s: the accepted knobs were not reported: the control connection stayed busy", self._launch.name)
            return
        try:
            client = self._client
            if client is None:
                return
            try:
                client.request("accepted", knobs=knobs, timeout=self._set_timeout())
                self._last_message = time.monotonic()
            except ControlTimeout:
                self._unanswered = f"no answer to an accepted report within {self._set_timeout():g} s"
            except ControlError as exc:
                self._last_message = time.monotonic()
                if "unknown message type" in str(exc):  # a worker from before the accepted report: nothing to keep
                    log.debug("%s does not take accepted reports: %s", self._launch.name, exc)
                else:
                    log.warning("%s: the accepted knobs %s were not kept by the worker: %s", self._launch.name, knobs, exc)
        finally:
            self._io.release()

    def restart(self) -> None:
        """Asks for the worker to be started afresh: a running one is drained first, and exits
        before it no longer count towards a crash loop. Done by the supervisor's thread at its
        next step; `status()` shows it."""
        with self._lock:
            self._restart_requested = True
            self._message = "restarting on request"

    def stop(self) -> int | None:
        """Drains the worker (SIGTERM, then SIGKILL after the drain timeout); returns its exit code."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            process = self._process
            self._state = WorkerState.STOPPING
            self._message = "draining"
        self._drain(process)
        with self._lock:
            self._state = WorkerState.STOPPED
            self._message = "stopped"
            self._pid = None
            if process is not None:
                self._last_exit_code = process.returncode
        return process.returncode if process is not None else None

    # --- the supervisor thread ------------------------------------------------------------------

    def _run(self) -> None:
        last_failure = ""
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:
                if repr(exc) != last_failure:  # the traceback once, not every second
                    log.exception("supervisor step failed")
                    last_failure = repr(exc)
                self._stop.wait(1.0)

    def _step(self) -> None:
        now = time.monotonic()
        with self._lock:
            process, state, restart = self._process, self._state, self._restart_requested
        if restart:
            self._restart_now(process)
            return
        if state is WorkerState.CRASH_LOOP:
            self._stop.wait(0.5)
            return
        if process is None:
            if self._first_start:
                self._first_start = False
                if self._adopt():
                    return
            if now >= self._next_start:
                self._spawn()
            else:
                self._stop.wait(min(self._next_start - now, 0.2))
            return
        code = process.poll()
        if code is not None:
            self._handle_exit(code)
        elif self._client is None:
            self._try_connect(now, state)
        else:
            self._watch(now, state)

    def _drain(self, process: subprocess.Popen[bytes] | AdoptedProcess | None) -> None:
        """Closes the control connection, then SIGTERM (the worker drains), SIGKILL after the drain timeout."""
        self._close_client()
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self._policy.drain_timeout)
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not drain within %.0f s; killing it", process.pid, self._policy.drain_timeout)
            process.kill()
            process.wait()

    def _restart_now(self, process: subprocess.Popen[bytes] | AdoptedProcess | None) -> None:
        if process is not None:
            log.info("restarting worker pid %d on request: draining it", process.pid)
        self._drain(process)
        self._restart_plan.forget()
        with self._lock:
            self._restart_requested = False
            if process is not None:
                self._last_exit_code = process.poll()
                self._restarts += 1
            self._process, self._pid = None, None
            self._state, self._message = WorkerState.BACKOFF, "restarting on request"
            self._next_start = time.monotonic()
        self._ready_event.clear()

    def _spawn(self) -> None:
        launch = self._launch
        command = launch.command()
        if self._placement is not None:
            command = shim_command(self._placement, command)
        try:
            launch.control_socket.unlink(missing_ok=True)
            process = subprocess.Popen(command, env={**os.environ, **launch.env}, start_new_session=True)
        except OSError as exc:
            log.error("cannot start the worker %s: %s", command[0], exc)
            self._handle_exit(127)
            return
        self._begin(process)
        where = f", on NUMA node {self._placement.node} CPUs {self._placement.cpulist()}" if self._placement else ""
        log.info("worker started, pid %d%s", process.pid, where)

    def _adopt(self) -> bool:
        """Takes over a worker still serving on the control socket (its daemon died without
        draining it); False when there is none, so a new one is started."""
        path = self._launch.control_socket
        if not path.exists():
            return False
        client = ControlClient(path, timeout=self._policy.ping_timeout)
        try:
            client.connect()
            process = AdoptedProcess(client.peer_pid())
        except (ControlError, OSError) as exc:
            log.info("no worker answers on %s (%s); starting a new one", path, exc)
            return False
        finally:
            client.close()
        self._begin(process)
        log.warning("adopted worker pid %d, left running by a previous gputuned; it keeps serving", process.pid)
        return True

    def _begin(self, process: subprocess.Popen[bytes] | AdoptedProcess) -> None:
        """Watches `process` from now on: connect, apply the knobs, wait for ready."""
        now = time.monotonic()
        self._history.clear()
        self._connect_deadline = now + self._policy.start_timeout
        with self._lock:
            self._process = process
            self._pid = process.pid
            self._state = WorkerState.STARTING
            self._message = "starting"
            self._started_at = now

    def _handle_exit(self, code: int) -> None:
        now = time.monotonic()
        self._close_client()
        with self._lock:
            started_at = self._started_at if self._process is not None else None
            self._process = None
            self._pid = None
            self._last_exit_code = code
            self._restarts += 1
            delay = self._restart_plan.on_exit(now, started_at)
            if delay is None:
                self._state = WorkerState.CRASH_LOOP
                self._message = self._restart_plan.crash_loop_message(code, self._launch.name)
            else:
                self._next_start = now + delay
                self._state = WorkerState.BACKOFF
                self._message = f"exited with code {code}; restarting in {delay:.1f} s"
            message = self._message
        if delay is None:
            log.error("worker %s", message)
            self._ready_event.set()  # nothing more to wait for
        else:
            log.warning("worker %s", message)

    def _try_connect(self, now: float, state: WorkerState) -> None:
        if state is WorkerState.PROTOCOL_ERROR:
            if now < self._next_start:
                self._stop.wait(min(self._next_start - now, 0.2))
                return
        elif now > self._connect_deadline:
            self._kill("its control socket did not answer in time")
            return
        if not self._launch.control_socket.exists():
            self._stop.wait(0.05)
            return
        client = ControlClient(self._launch.control_socket, timeout=self._policy.ping_timeout)
        try:
            hello = client.connect()
            wanted = self._on_hello(hello)
            current = {name: spec["value"] for name, spec in hello["knobs"].items()}
            differing = {name: value for name, value in wanted.items() if name in current and current[name] != value}
            if differing:
                current.update(client.set(differing, timeout=self._set_timeout()))
        except ControlProtocolError as exc:
            client.close()
            self._protocol_error(str(exc), now)
            return
        except ControlError as exc:
            client.close()
            log.debug("control connection not ready: %s", exc)
            self._stop.wait(0.1)
            return
        with self._io:
            self._client, self._unanswered = client, None
        self._last_message = self._last_ping = now
        with self._lock:
            self._hello = hello
            self._knobs = current
            if self._state is WorkerState.PROTOCOL_ERROR:
                self._state, self._message = WorkerState.STARTING, "starting"
        self._protocol_complaint = ""
        log.info(
            "connected to the worker's control socket (model %s on %s)",
            hello["worker"].get("model"),
            hello["worker"].get("device"),
        )

    def _protocol_error(self, reason: str, now: float) -> None:
        """The worker answers but breaks the protocol: say so, leave it running untuned, retry later."""
        self._next_start = now + PROTOCOL_RETRY_SECONDS
        with self._lock:
            self._state = WorkerState.PROTOCOL_ERROR
            self._message = f"protocol error: {reason}; the worker is left running, not tuned"
            self._hello = None
            self._knobs = {}
        if reason != self._protocol_complaint:
            log.error("worker pid %s breaks the control protocol: %s; it is left running and not tuned", self._pid, reason)
            self._protocol_complaint = reason
        self._ready_event.set()  # as ready as it will get

    def _set_timeout(self) -> float:
        """How long a set may go unanswered before the worker counts as hung."""
        return max(self._policy.ping_timeout, self._launch.set_timeout)

    def _http_ready(self) -> bool:
        if self._launch.ready_url is None:
            return True
        try:
            with urllib.request.urlopen(self._launch.ready_url, timeout=1.0) as response:  # noqa: S310 - an http:// URL we built
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _watch(self, now: float, state: WorkerState) -> None:
        """Reads what the worker sent, pings it when due, and kills it when it stays silent.
        While a set holds the connection, the set's own timeout watches the worker."""
        if not self._io.acquire(timeout=IO_POLL_SECONDS):
            return
        try:
            hung = self._exchange(now)
        finally:
            self._io.release()
        if hung is not None:
            self._kill(hung)
            return
        if state is WorkerState.STARTING and self._http_ready():
            with self._lock:
                self._state = WorkerState.READY
                self._message = "serving"
            self._ready_event.set()
            log.info("worker ready")

    def _exchange(self, now: float) -> str | None:
        """Under `_io`: takes the stats that arrived and pings when due; returns why the worker
        looks hung, or None."""
        client = self._client
        if client is None:
            return None
        if self._unanswered is not None:
            return self._unanswered
        try:
            message = client.receive(timeout=IO_POLL_SECONDS)
        except ControlTimeout:
            message = None
        except ControlError as exc:
            self._lose_connection(str(exc))
            return None
        arrived = [*client.stats, *([message] if message is not None and message["type"] == "stats" else [])]
        client.stats.clear()
        if message is not None:
            self._last_message = now
        for report in arrived:
            self._history.append(report["t"], read_stats(report["stats"]))
        if now - self._last_ping >= self._policy.ping_interval:
            self._last_ping = now
            try:
                client.ping()
                self._last_message = time.monotonic()
            except ControlTimeout:
                return f"no answer to a ping within {self._policy.ping_timeout:g} s"
            except ControlError as exc:
                self._lose_connection(str(exc))
                return None
        if time.monotonic() - self._last_message > self._policy.ping_timeout:
            return f"no message from the worker for {self._policy.ping_timeout:g} s"
        return None

    def _reread_knobs(self, client: ControlClient) -> None:
        """After a refused set: what the worker holds now (it restores what it had changed)."""
        try:
            knobs = client.knobs()
        except ControlError as exc:
            log.warning("cannot re-read the worker's knobs after a refused set: %s", exc)
            return
        with self._lock:
            self._knobs = {name: value for name, value in knobs.items() if name in self._knobs}

    def _lose_connection(self, reason: str) -> None:
        """The connection broke but the process may live: reconnect within the ping timeout."""
        if self._client is not None:
            self._client.close()
            self._client = None
        self._connect_deadline = time.monotonic() + self._policy.ping_timeout
        log.warning("lost the control connection: %s", reason)

    def _kill(self, reason: str) -> None:
        with self._lock:
            process = self._process
            self._message = f"killed: {reason}"
        self._close_client()
        if process is not None and process.poll() is None:
            log.error("worker %d is hung (%s); killing it", process.pid, reason)
            process.kill()
            process.wait()

    def _close_client(self) -> None:
        """Closes the connection; a set in flight on it fails with a connection error."""
        client, self._client = self._client, None
        if client is not None:
            client.close()
