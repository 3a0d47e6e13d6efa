"""A vLLM server as the daemon sees a worker: its scheduler's knobs, sets, cumulative stats.

It implements the control socket's handler (control/server.py). The knobs are the plugin's
(plugin.py, in vLLM's engine core): each set opens the plugin's socket, sends the set, and
takes its answer, which comes once the values are in force; the hello read at each connection
is the truth about the values. Without the plugin (not installed in vLLM's environment, no
socket configured for an attached server, a vLLM version it does not know) the worker
declares no knobs and says why in its identity's `note`: gputuned monitors it untuned.

Stats are polled from vLLM's /metrics (`poll`, from the adapter's poll thread) into running
totals that survive vLLM's restarts (readings.py). When vLLM answers again after being away
(restarted by its owner), the plugin is read afresh and the accepted knobs are put back.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gputuned.adapting.worker import AdaptedWorker
from gputuned.control.client import ControlClient, ControlError
from gputuned.control.protocol import message
from gputuned.knobs import KnobError, KnobSpec, validate_changes
from gputuned.performance import Counters
from gputuned.vllm.api import VllmClient
from gputuned.vllm.plugin import SOCKET_ENV
from gputuned.vllm.readings import raw_readings, worker_stats

log = logging.getLogger(__name__)

PLUGIN_TIMEOUT_SECONDS = 10.0  # a set waits for the engine's current step to end
NO_SOCKET = (
    f"knobs read-only: no plugin socket is configured (vllm_plugin_socket; vLLM must run with "
    f"{SOCKET_ENV} set to it and gputuned's vLLM plugin installed)"
)


class VllmWorker(AdaptedWorker):
    server_name = "vLLM"

    def __init__(self, client: VllmClient, plugin_socket: Path | None, model: str, device: str) -> None:
        super().__init__({"pid": os.getpid(), "kind": "vllm", "model": model, "device": device})
        self._client = client
        self._plugin_socket = plugin_socket
        self._setting = threading.Lock()  # one set at a time
        self._specs: dict[str, KnobSpec] = {}
        self._restart_only: dict[str, str] = {}
        self._counters = Counters()

    # --- start ----------------------------------------------------------------------------

    def attach(self, saved: Mapping[str, int]) -> None:
        """Reads the plugin's knobs and applies `saved` ones (skipped with a warning if refused)."""
        self._reread()
        self._start(saved)

    def _reread(self) -> None:
        """Takes the plugin's hello as the truth about the knobs; without one, none are offered."""
        note = NO_SOCKET
        hello: dict[str, Any] = {}
        if self._plugin_socket is not None:
            try:
                with ControlClient(self._plugin_socket, timeout=PLUGIN_TIMEOUT_SECONDS) as plugin:
                    hello = plugin.hello
                note = ""
            except ControlError as exc:
                note = (
                    f"knobs read-only: gputuned's vLLM plugin does not answer on {self._plugin_socket} ({exc}); "
                    "install it into vLLM's environment (gputuned vllm-plugin), and see vLLM's log for its reason"
                )
        with self._lock:
            self._specs = {name: KnobSpec.from_wire(name, wire) for name, wire in hello.get("knobs", {}).items()}
            self._values = {name: int(wire["value"]) for name, wire in hello.get("knobs", {}).items()}
            self._restart_only = {name: str(value) for name, value in hello.get("restart_only", {}).items()}
            if note:
                self._identity["note"] = note
            else:
                self._identity.pop("note", None)
        if note:
            log.warning("%s", note)

    # --- ControlHandler -------------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        with self._lock:
            knobs = {name: spec.to_wire(self._values[name]) for name, spec in self._specs.items()}
            restart_only = {**self._restart_only, "vllm": self._client.url}
            return message("hello", worker=dict(self._identity), knobs=knobs, restart_only=restart_only)

    def apply(self, knobs: dict[str, Any]) -> dict[str, int]:
        """One set through the plugin, all or nothing: see the module docstring."""
        with self._setting:
            with self._lock:
                if not self._specs:
                    raise KnobError(self._identity.get("note") or NO_SOCKET)
                checked = validate_changes(self._specs, knobs, (*self._restart_only, "vllm"))
            assert self._plugin_socket is not None  # specs come only from the plugin
            try:
                with ControlClient(self._plugin_socket, timeout=PLUGIN_TIMEOUT_SECONDS) as plugin:
                    applied = plugin.set(checked)
            except ControlError as exc:
                raise KnobError(str(exc)) from None
            with self._lock:
                self._values.update(applied)
            self._remember(applied)
            return applied

    def accepted(self, knobs: dict[str, int]) -> None:
        """Nothing to keep: vLLM has no config file of its knobs; they are re-applied at its restarts."""

    # --- polling --------------------------------------------------------------------------------

    def _fetch(self) -> tuple[dict[str, float], dict[str, float]]:
        return raw_readings(self._client.metrics())

    def _take(self, reading: tuple[dict[str, float], dict[str, float]]) -> None:
        counters, gauges = reading
        self._counters.update(counters)
        with self._lock:
            self._snapshot = worker_stats(self._counters.totals, gauges)
