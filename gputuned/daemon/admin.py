"""The daemon's admin socket: what `gputuned status`, `set` and `tune` talk to.

It speaks the control protocol with the same connection discipline as a worker's socket
(framing, validation, size limits, peer credentials, connection cap: `LineServer`), and
answers:

- a hello carrying the worker's knob schema with the values the daemon holds;
- `status` with the report of `gputuned/daemon/status.py`, built from snapshots only, in
  the socket's own event loop: it never waits on a worker;
- `set`, forwarded to the worker (recorded as accepted and frozen for the tuner until
  `tune --resume`), `tune`, which changes the tuner's mode, and `restart`, which starts one
  worker afresh (out of a crash loop, or drained and started again) and touches no other.
  They run in a thread of their own, so a worker that is slow to acknowledge holds up that
  one request and no other client of the socket.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Protocol

from gputuned import __version__
from gputuned.control.client import ControlError
from gputuned.control.protocol import message, nack
from gputuned.control.server import LineServer
from gputuned.knobs import KnobError


class AdminHandler(Protocol):
    """What the daemon offers on its admin socket."""

    def worker_names(self) -> list[str]: ...

    def worker_hello(self) -> dict[str, Any] | None:
        """The only worker's hello with the knob values the daemon holds; None without one or
        with several (their knobs are told by `status`)."""
        ...

    def status_report(self) -> dict[str, Any]:
        """The report `gputuned status` shows; must not wait on a worker."""
        ...

    def manual_set(self, changes: dict[str, int], worker: str | None) -> dict[str, int]:
        """Applies knobs by hand to a worker (None: the only one); raises KnobError or ControlError with the reason."""
        ...

    def tune(self, mode: str | None, resume: bool, worker: str | None) -> dict[str, Any]:
        """Changes a worker's tuner mode and/or unfreezes its hand-set knobs; returns the status report."""
        ...

    def restart(self, worker: str | None) -> dict[str, Any]:
        """Starts a worker afresh (None: the only one); returns the status report."""
        ...


class AdminServer(LineServer):
    def __init__(self, path: Any, handler: AdminHandler, **options: Any) -> None:
        super().__init__(path, **options)
        self._handler = handler

    def hello(self) -> dict[str, Any]:
        identity = {
            "pid": os.getpid(),
            "role": "gputuned daemon",
            "version": __version__,
            "workers": self._handler.worker_names(),
        }
        worker = self._handler.worker_hello()
        if worker is None:
            return message("hello", worker=identity, knobs={})
        return message(
            "hello",
            worker={**identity, "worker": worker["worker"]},
            knobs=worker["knobs"],
            restart_only=worker.get("restart_only", {}),
        )

    async def greet(self, writer: asyncio.StreamWriter) -> asyncio.Task[None] | None:
        await self.send(writer, self.hello())
        return None

    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        kind, seq = request["type"], request.get("seq")
        try:
            if kind == "status" and "status" not in request:
                return message("status", seq=seq, status=self._handler.status_report())
            if kind == "set":
                applied = await asyncio.to_thread(self._handler.manual_set, request["knobs"], request.get("worker"))
                return message("ack", seq=seq, applied=applied)
            if kind == "tune":
                report = await asyncio.to_thread(
                    self._handler.tune, request.get("mode"), request.get("resume", False), request.get("worker")
                )
                return message("status", seq=seq, status=report)
            if kind == "restart":
                report = await asyncio.to_thread(self._handler.restart, request.get("worker"))
                return message("status", seq=seq, status=report)
        except (KnobError, ControlError) as exc:
            return nack(str(exc), seq)
        return nack(f"{kind} is not a request the daemon accepts", seq)
