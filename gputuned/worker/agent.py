"""The embeddable agent: makes any PyTorch server a worker that gputuned can tune.

It serves the control socket from a thread of its own, so it works beside any server
framework. The server registers its knobs with callbacks that apply a value (they run
in the agent's thread and must be thread-safe, e.g. set a value the serving loop reads
at its next batch) and a function returning its stats::

from gputuned.worker.agent import Agent

    agent = Agent("/run/gputuned/worker.sock", model="my-model", device="cuda:0",
                  input_shape=[3, 224, 224], input_dtype="FP32")
    agent.knob("max_batch_size", default=8, minimum=1, maximum=256,
               apply=lambda value: setattr(batcher, "max_batch_size", value))
    agent.stats_source(lambda: {"completed": server.completed, "failed": server.failed})
    agent.start()          # serve the socket in the background
    ...
    agent.stop()

A set is all-or-nothing: every value is checked before any is applied, and when a
callback fails part-way (a pool that cannot be allocated after the batch size was
changed), the values already changed are set back to what they were and the set is
answered with a nack saying so; the knobs are then exactly as before the set.

The server keeps running with its last values if the daemon disconnects; the daemon
reconnects to the same socket.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gputuned.control.messages import StatsReport, WorkerIdentity, WorkerStatusBody
from gputuned.control.protocol import message
from gputuned.control.server import ControlServer, ServerThread
from gputuned.knobs import KnobError, KnobSpec, validate_changes

log = logging.getLogger(__name__)


class Agent:
    def __init__(
        self,
        socket_path: str | Path | None,
        *,
        model: str,
        device: str,
        input_shape: list[int],
        input_dtype: str,
        group: int | None = None,
        stats_interval: float = 0.5,
        kind: str = "agent",
    ) -> None:
        self._path = Path(socket_path) if socket_path is not None else None
        self._identity: WorkerIdentity = {
            "pid": os.getpid(),
            "kind": kind,  # builtin: gputuned's own worker; agent: a server that embeds this class
            "model": model,
            "device": device,
            "input": {"shape": list(input_shape), "dtype": input_dtype},
        }
        self._group = group
        self._stats_interval = stats_interval
        self._specs: dict[str, KnobSpec] = {}
        self._appliers: dict[str, Callable[[int], int | None]] = {}
        self._values: dict[str, int] = {}
        self._restart_only: dict[str, str] = {"device": device, "model": model}
        self._stats: Callable[[], StatsReport] = StatsReport
        self._lock = threading.Lock()
        self._runner: ServerThread | None = None

    # --- registration (before start) ----------------------------------------------------

    def knob(
        self,
        name: str,
        *,
        default: int,
        minimum: int,
        maximum: int,
        apply: Callable[[int], int | None],
        description: str = "",
    ) -> None:
        """Declares a live knob; `apply(value)` returns the value it actually applied (or None for `value`)."""
        self.declare(KnobSpec(name, default, minimum, maximum, True, description, name), apply)

    def declare(self, spec: KnobSpec, apply: Callable[[int], int | None]) -> None:
        """Declares a live knob from its spec (a catalogue knob's `KnobDef.spec`)."""
        spec.check(spec.default)
        self._specs[spec.name] = spec
        self._appliers[spec.name] = apply
        self._values[spec.name] = spec.default

    def restart_only(self, name: str, value: int | str) -> None:
        """Declares a setting that changes only at restart; a set of it is refused with that reason."""
        self._restart_only[name] = str(value)

    def stats_source(self, source: Callable[[], StatsReport]) -> None:
        self._stats = source

    @property
    def values(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    # --- ControlHandler -------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        with self._lock:
            knobs = {name: spec.to_wire(self._values[name]) for name, spec in self._specs.items()}
        return message("hello", worker=self._identity, knobs=knobs, restart_only=dict(self._restart_only))

    def apply(self, knobs: dict[str, Any]) -> dict[str, int]:
        """Applies every change or none: see the module docstring."""
        with self._lock:
            checked = validate_changes(self._specs, knobs, self._restart_only)
            before = dict(self._values)
            applied: dict[str, int] = {}
            for name, value in checked.items():
                try:
                    result = self._appliers[name](value)
                except Exception as exc:  # a server's callback must not kill the agent
                    undone = self._restore(before, applied)
                    raise KnobError(f"{name}={value} could not be applied: {exc}; {undone}") from exc
                applied[name] = value if result is None else int(result)
                self._values[name] = applied[name]
            return applied

    def _restore(self, before: dict[str, int], applied: dict[str, int]) -> str:
        """Sets the knobs changed so far back to `before`, last first; says what it did, for the nack."""
        if not applied:
            return "nothing was changed"
        restored, stuck = [], []
        for name in reversed(list(applied)):
            try:
                self._appliers[name](before[name])
            except Exception as exc:  # noqa: BLE001 - reported in the nack; the others are still restored
                stuck.append(f"{name} stays {applied[name]} ({exc})")
                continue
            self._values[name] = before[name]
            restored.append(f"{name}={before[name]}")
        if stuck:
            return f"restored {', '.join(restored) or 'nothing'}; could not restore {'; '.join(stuck)}"
        return f"restored {', '.join(restored)}: nothing was changed"

    def accepted(self, knobs: dict[str, int]) -> None:
        """Nothing to keep: an agent's server holds its knobs in memory, and the daemon hands
        the accepted ones back at its next start (`--saved-knob`, or its first set)."""

    def stats(self) -> StatsReport:
        return self._stats()

    def status(self) -> WorkerStatusBody:
        return {"worker": self._identity, "knobs": self.values}

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Binds the socket and serves it from a daemon thread; raises if binding failed."""
        if self._path is None:
            raise ValueError("this agent was built without a socket path")
        server = ControlServer(self._path, self, group=self._group, stats_interval=self._stats_interval)
        self._runner = ServerThread(server, "gputuned-agent")
        self._runner.start()
        log.info("control socket listening on %s", self._path)

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.stop()
