"""The connecting side of the control socket: `gputuned set`, the benchmarks, the daemon.

Blocking and simple on purpose: one request at a time, matched to its reply by sequence
number. Stats the worker streams meanwhile are kept (the newest few) rather than lost.
"""

from __future__ import annotations

import collections
import socket
import time
from pathlib import Path
from typing import Any

from gputuned.control.peers import peer_credentials
from gputuned.control.protocol import MAX_MESSAGE_BYTES, ProtocolError, decode, encode, message, validate_hello


class ControlError(Exception):
    """The worker refused a request (nack) or the connection failed; the message says why."""


class ControlTimeout(ControlError):
    """Nothing arrived from the worker within the timeout (it may be hung)."""


class ControlProtocolError(ControlError):
    """The worker answered, but not as the protocol says (e.g. a hello without knob bounds)."""


# How long a person's or a sweep's set waits for its answer. A set may take seconds (a Triton
# model reloads); whether the worker hangs is the daemon's to judge, with its own timeout.
SLOW_SET_SECONDS = 120.0


class ControlClient:
    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self._path = path
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._seq = 0
        self.hello: dict[str, Any] = {}
        self.stats: collections.deque[dict[str, Any]] = collections.deque(maxlen=16)

    def __enter__(self) -> ControlClient:
        self.connect()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def connect(self) -> dict[str, Any]:
        """Connects and returns the worker's hello; ControlError if refused or unreachable."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(str(self._path))
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot connect to {self._path}: {exc.strerror or exc}") from None
        self._sock = sock
        first = self.receive()
        if first["type"] == "nack":
            self.close()
            raise ControlError(f"worker refused the connection: {first['error']}")
        if first["type"] != "hello":
            self.close()
            raise ControlProtocolError(f"expected a hello from the worker, got {first['type']}")
        try:
            self.hello = validate_hello(first)
        except ProtocolError as exc:
            self.close()
            raise ControlProtocolError(str(exc)) from None
        return first

    def peer_pid(self) -> int:
        """The pid of the process serving the socket, from the kernel (SO_PEERCRED)."""
        if self._sock is None:
            raise ControlError("not connected")
        return peer_credentials(self._sock).pid

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send_raw(self, data: bytes) -> None:
        """Sends bytes as they are (tests use it to send malformed messages)."""
        if self._sock is None:
            raise ControlError("not connected")
        self._sock.sendall(data)

    def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message from the worker (stats included)."""
        if self._sock is None:
            raise ControlError("not connected")
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_MESSAGE_BYTES:
                raise ControlError("the worker sent a message over the size limit")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ControlTimeout(f"no message from the worker within {self._timeout if timeout is None else timeout:g} s")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise ControlError(f"control connection failed: {exc.strerror or exc}") from None
            if not chunk:
                raise ControlError("the worker closed the control connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return decode(line)
        except ProtocolError as exc:
            raise ControlError(f"the worker sent an invalid message: {exc}") from None

    def request(self, kind: str, *, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Sends a request with the next sequence number; returns its reply (ack/pong) or raises on
        nack. `timeout` bounds the wait for the reply (default: the client's), however many stats
        messages arrive meanwhile: a worker that streams stats but never answers is still hung."""
        self._seq += 1
        seq = self._seq
        self.send_raw(encode(message(kind, seq=seq, **fields)))
        wait = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ControlTimeout(f"no answer to the {kind} within {wait:g} s")
            reply = self.receive(remaining)
            if reply["type"] == "stats":
                self.stats.append(reply)
                continue
            if reply.get("seq") != seq:
                if reply["type"] == "nack":
                    raise ControlError(reply["error"])
                continue  # a late reply to an earlier request that timed out
            if reply["type"] == "nack":
                raise ControlError(reply["error"])
            return reply

    def set(self, knobs: dict[str, int], worker: str | None = None, timeout: float | None = None) -> dict[str, int]:
        """Applies knobs; returns what the worker applied. ControlError carries its refusal.
        `worker` names one of the daemon's workers (on its admin socket); `timeout` bounds the
        wait for the answer (default: the client's)."""
        fields = {"knobs": knobs} if worker is None else {"knobs": knobs, "worker": worker}
        applied: dict[str, int] = self.request("set", timeout=timeout, **fields)["applied"]  # ints: protocol.validate
        return applied

    def ping(self) -> float:
        """Round-trip time of a ping, in seconds."""
        started = time.perf_counter()
        self.request("ping")
        return time.perf_counter() - started

    def knobs(self) -> dict[str, int]:
        """The worker's knob values now, from its status (after a nack, what it really holds)."""
        knobs = self.request("status").get("status", {}).get("knobs")
        if not isinstance(knobs, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in knobs.values()):
            raise ControlProtocolError(f"the worker's status has no knob values: {knobs!r}")
        return knobs

    def next_stats(self, timeout: float | None = None) -> dict[str, Any]:
        """The first stats message taken after this call (older ones still buffered are skipped)."""
        asked_at = time.monotonic()
        while True:
            reply = self.receive(timeout)
            if reply["type"] == "stats" and reply["t"] >= asked_at:
                return reply
