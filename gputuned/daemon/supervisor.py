"""The supervisor: starts the worker, watches it, restarts it, and drains it.

It runs one thread that owns the worker process and the control connection:

    STARTING --connected (and HTTP ready)--> READY
    STARTING/READY --exit--> BACKOFF --delay--> STARTING
    BACKOFF --too many exits in the window--> CRASH_LOOP (no more restarts; daemon stays up)
    READY --no pong / no message within the ping timeout--> killed (SIGKILL) --exit--> BACKOFF
    any --stop()--> STOPPING (SIGTERM: the worker drains) --exit or drain timeout (SIGKILL)--> STOPPED

Before its first start it looks for a worker that a previous daemon left running (one
answering on the control socket) and adopts it rather than starting a second one.

Restart delays grow exponentially with jitter and reset once a worker has run for a
whole crash-loop window. Knob changes from other threads go through `set_knobs`, which
shares the connection under a lock.
"""

from __future__ import annotations

import collections
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
from pathlib import Path
from typing import Any

from gputuned.control.client import ControlClient, ControlError, ControlTimeout
from gputuned.daemon.adopted import AdoptedProcess
from gputuned.daemon.placement import Placement, shim_command

log = logging.getLogger(__name__)

STATS_HISTORY = 600  # stats reports kept for windows (5 minutes at the worker's 0.5 s)


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"
    CRASH_LOOP = "crash_loop"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RestartPolicy:
    initial_delay: float = 0.5
    max_delay: float = 30.0
    crash_loop_exits: int = 5
    crash_loop_window: float = 60.0
    ping_interval: float = 2.0
    ping_timeout: float = 10.0
    start_timeout: float = 120.0
    drain_timeout: float = 30.0

    def delay(self, consecutive_exits: int, rng: random.Random) -> float:
        """Exponential backoff with +-20% jitter (so a fleet does not restart in lockstep)."""
        base = min(self.initial_delay * 2 ** max(consecutive_exits - 1, 0), self.max_delay)
        return base * rng.uniform(0.8, 1.2)


class CrashLoopDetector:
    """True once `exits` exits fall within `window` seconds."""

    def __init__(self, exits: int, window: float) -> None:
        self._exits = exits
        self._window = window
        self._times: collections.deque[float] = collections.deque()

    def record_exit(self, at: float) -> bool:
        self._times.append(at)
        while self._times and at - self._times[0] > self._window:
            self._times.popleft()
        return len(self._times) >= self._exits


@dataclass(frozen=True)
class WorkerLaunch:
    command: Callable[[], list[str]]  # built at each start: the last accepted knobs go along
    control_socket: Path
    ready_url: str | None  # the built-in worker's HTTP readiness; None: ready once connected
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerStatus:
    """A consistent view of the supervised worker for collectors, status and sd_notify."""

    state: WorkerState
    pid: int | None
    restarts: int
    last_exit_code: int | None
    started_at: float | None  # wall clock
    ready_at: float | None
    hello: dict[str, Any] | None
    knobs: dict[str, int]
    stats: dict[str, Any] | None
    stats_at: float | None
    placement: Placement | None
    message: str


class Supervisor:
    def __init__(
        self,
        launch: WorkerLaunch,
        policy: RestartPolicy,
        placement: Placement | None,
        on_hello: Callable[[dict[str, Any]], dict[str, int]],
        on_applied: Callable[[dict[str, Any], dict[str, int]], None],
        rng: random.Random | None = None,
    ) -> None:
        """`on_hello(hello)` returns the knobs to (re-)apply to a newly connected worker;
        `on_applied(hello, knobs)` records knobs the worker acknowledged."""
        self._launch = launch
        self._policy = policy
        self._placement = placement
        self._on_hello = on_hello
        self._on_applied = on_applied
        self._rng = rng or random.Random()
        self._lock = threading.RLock()  # guards the fields below and the control client
        self._process: subprocess.Popen[bytes] | AdoptedProcess | None = None
        self._first_start = True
        self._client: ControlClient | None = None
        self._state = WorkerState.STARTING
        self._restarts = 0
        self._consecutive_exits = 0
        self._last_exit_code: int | None = None
        self._started_at: float | None = None
        self._started_monotonic = 0.0
        self._ready_at: float | None = None
        self._next_start = 0.0
        self._hello: dict[str, Any] | None = None
        self._knobs: dict[str, int] = {}
        self._stats: dict[str, Any] | None = None
        self._stats_at: float | None = None
        self._history: collections.deque[tuple[float, dict[str, Any]]] = collections.deque(maxlen=STATS_HISTORY)
        self._last_message = 0.0
        self._last_ping = 0.0
        self._connect_deadline = 0.0
        self._message = "starting"
        self._crash_loop = CrashLoopDetector(policy.crash_loop_exits, policy.crash_loop_window)
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
        with self._lock:
            return WorkerStatus(
                state=self._state,
                pid=self._process.pid if self._process is not None and self._process.poll() is None else None,
                restarts=self._restarts,
                last_exit_code=self._last_exit_code,
                started_at=self._started_at,
                ready_at=self._ready_at,
                hello=self._hello,
                knobs=dict(self._knobs),
                stats=self._stats,
                stats_at=self._stats_at,
                placement=self._placement,
                message=self._message,
            )

    def stats_between(self, start: float, end: float) -> tuple[tuple[float, dict[str, Any]], tuple[float, dict[str, Any]]] | None:
        """The stats reports that bound [start, end] best: the last at or before each time."""
        with self._lock:
            history = list(self._history)
        older = [entry for entry in history if entry[0] <= start] or history[:1]
        newer = [entry for entry in history if entry[0] <= end]
        if not older or not newer or newer[-1][0] <= older[-1][0]:
            return None
        return older[-1], newer[-1]

    def set_knobs(self, changes: dict[str, int], persist: bool = True) -> dict[str, int]:
        """Sends a set to the worker; returns what it applied. ControlError if refused or not connected.

        `persist` records the values as accepted (the tuner's trials are not, until kept)."""
        with self._lock:
            if self._client is None or self._hello is None:
                raise ControlError(f"the worker is not connected ({self._state.value}: {self._message})")
            applied = self._client.set(changes)
            self._knobs.update(applied)
            hello = self._hello
        if persist:
            self._on_applied(hello, applied)
        return applied

    def stop(self) -> int | None:
        """Drains the worker (SIGTERM, then SIGKILL after the drain timeout); returns its exit code."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            process = self._process
            self._state = WorkerState.STOPPING
            self._message = "draining"
            self._close_client()
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self._policy.drain_timeout)
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not drain within %.0f s; killing it", process.pid, self._policy.drain_timeout)
                process.kill()
                process.wait()
        with self._lock:
            self._state = WorkerState.STOPPED
            self._message = "stopped"
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
            process, state = self._process, self._state
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
            return
        if self._client is None:
            self._try_connect(now)
            return
        self._watch(now)

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
        log.info(
            "worker started, pid %d%s",
            process.pid,
            f", on NUMA node {self._placement.node} CPUs {self._placement.cpulist()}" if self._placement else "",
        )

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
        with self._lock:
            self._process = process
            self._state = WorkerState.STARTING
            self._message = "starting"
            self._started_at = time.time()
            self._started_monotonic = time.monotonic()
            self._connect_deadline = self._started_monotonic + self._policy.start_timeout
            self._ready_at = None
            self._stats = self._stats_at = None
            self._history.clear()

    def _handle_exit(self, code: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._close_client()
            self._process = None
            self._last_exit_code = code
            if self._started_monotonic and now - self._started_monotonic >= self._policy.crash_loop_window:
                self._consecutive_exits = 0  # it ran well for a whole window: start the backoff afresh
            self._consecutive_exits += 1
            self._restarts += 1
            if self._crash_loop.record_exit(now):
                self._state = WorkerState.CRASH_LOOP
                self._message = (
                    f"crash loop: {self._policy.crash_loop_exits} exits within "
                    f"{self._policy.crash_loop_window:g} s; not restarting (last exit code {code})"
                )
                log.error("worker %s", self._message)
                self._ready_event.set()  # nothing more to wait for
                return
            delay = self._policy.delay(self._consecutive_exits, self._rng)
            self._next_start = now + delay
            self._state = WorkerState.BACKOFF
            self._message = f"exited with code {code}; restarting in {delay:.1f} s"
        log.warning("worker %s", self._message)

    def _try_connect(self, now: float) -> None:
        if now > self._connect_deadline:
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
            differing = {name: value for name, value in wanted.items() if current.get(name) != value and name in current}
            if differing:
                current.update(client.set(differing))
        except ControlError as exc:
            client.close()
            log.debug("control connection not ready: %s", exc)
            self._stop.wait(0.1)
            return
        with self._lock:
            self._client = client
            self._hello = hello
            self._knobs = current
            self._last_message = self._last_ping = now
        log.info(
            "connected to the worker's control socket (model %s on %s)",
            hello["worker"].get("model"),
            hello["worker"].get("device"),
        )

    def _http_ready(self) -> bool:
        if self._launch.ready_url is None:
            return True
        try:
            with urllib.request.urlopen(self._launch.ready_url, timeout=1.0) as response:  # noqa: S310 - an http:// URL we built
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _watch(self, now: float) -> None:
        with self._lock:
            client = self._client
            if client is None:
                return
            try:
                message = client.receive(timeout=0.05)
            except ControlTimeout:
                message = None
            except ControlError as exc:
                self._lose_connection(str(exc))
                return
            if message is not None:
                self._last_message = now
            arrived = [*client.stats, *([message] if message is not None and message["type"] == "stats" else [])]
            client.stats.clear()
            for report in arrived:
                self._stats, self._stats_at = report["stats"], report["t"]
                self._history.append((report["t"], report["stats"]))
                self._last_message = now
            state = self._state
        if state is WorkerState.STARTING and self._http_ready():
            with self._lock:
                self._state = WorkerState.READY
                self._message = "serving"
                self._ready_at = time.time()
            self._ready_event.set()
            log.info("worker ready")
        if now - self._last_ping >= self._policy.ping_interval:
            self._ping(now)
        if time.monotonic() - self._last_message > self._policy.ping_timeout:
            self._kill(f"no message from the worker for {self._policy.ping_timeout:g} s")

    def _ping(self, now: float) -> None:
        with self._lock:
            client = self._client
            if client is None:
                return
            self._last_ping = now
            try:
                client.ping()
                self._last_message = time.monotonic()
                return
            except ControlTimeout:
                pass
            except ControlError as exc:
                self._lose_connection(str(exc))
                return
        self._kill(f"no answer to a ping within {self._policy.ping_timeout:g} s")

    def _lose_connection(self, reason: str) -> None:
        """The connection broke but the process may live: reconnect within the ping timeout."""
        with self._lock:
            self._close_client()
            self._connect_deadline = time.monotonic() + self._policy.ping_timeout
        log.warning("lost the control connection: %s", reason)

    def _kill(self, reason: str) -> None:
        with self._lock:
            process = self._process
            self._close_client()
            self._message = f"killed: {reason}"
        if process is not None and process.poll() is None:
            log.error("worker %d is hung (%s); killing it", process.pid, reason)
            process.kill()
            process.wait()

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
