"""The daemon's admin socket: what `gputuned status` and `gputuned set` talk to.

It speaks the control protocol (the same framing, validation, size limits, peer
credential check and connection cap as a worker's socket): a hello carrying the
worker's knob schema, `set` forwarded to the worker (recorded as accepted, and frozen
for the tuner until `tune --resume`), `tune` to change the tuner's mode, and `status`
answered with the report built in `gputuned/daemon/status.py`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from gputuned import __version__
from gputuned.control.client import ControlError
from gputuned.control.protocol import message
from gputuned.knobs import KnobError


class AdminHandler:
    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        worker_hello: Callable[[], dict[str, Any] | None],
        set_knobs: Callable[[dict[str, int]], dict[str, int]] | None,
        tune: Callable[[str | None, bool], dict[str, Any]],
    ) -> None:
        self._status = status
        self._worker_hello = worker_hello
        self._set_knobs = set_knobs
        self.tune = tune

    def hello(self) -> dict[str, Any]:
        worker = self._worker_hello()
        identity = {"pid": os.getpid(), "role": "gputuned daemon", "version": __version__}
        if worker is None:
            return message("hello", worker=identity, knobs={})
        return message(
            "hello",
            worker={**identity, "worker": worker["worker"]},
            knobs=worker["knobs"],
            restart_only=worker.get("restart_only", {}),
        )

    def apply(self, knobs: dict[str, Any]) -> dict[str, int]:
        if self._set_knobs is None:
            raise KnobError("this daemon runs without a worker (--no-worker); there are no knobs to set")
        try:
            return self._set_knobs(knobs)
        except ControlError as exc:
            raise KnobError(str(exc)) from None

    def stats(self) -> dict[str, Any]:
        return {}

    def status(self) -> dict[str, Any]:
        return self._status()
