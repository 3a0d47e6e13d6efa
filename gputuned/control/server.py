"""Serving the control protocol on a Unix socket: the connection discipline both sockets share.

`LineServer` is what a worker's control socket and the daemon's admin socket have in
common: each connection is checked with SO_PEERCRED (same uid, root, or a configured
group), the number of connections is capped, a bad line gets a nack and the connection
carries on, and a line over the size limit, a partial line that trickles for longer than
`partial_timeout`, or a client that stops reading closes that connection only. What a
connection is greeted with and how requests are answered is the subclass's
(`ControlServer` here for workers; `gputuned.daemon.admin.AdminServer` for the daemon).
None of it can stop the process that serves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from gputuned.control.messages import StatsReport, WorkerStatusBody
from gputuned.control.peers import peer_allowed, peer_credentials
from gputuned.control.protocol import MAX_MESSAGE_BYTES, ProtocolError, decode, encode, message, nack
from gputuned.knobs import KnobError

log = logging.getLogger(__name__)

MAX_WRITE_BUFFER = 1024 * 1024  # a client this far behind on reading is dropped


class ControlHandler(Protocol):
    """What a worker offers on its control socket (the Agent implements it)."""

    def hello(self) -> dict[str, Any]:
        """The hello message (identity and knob schema with current values)."""
        ...

    def apply(self, knobs: dict[str, Any]) -> dict[str, int]:
        """Validates and applies a change set, all or nothing; returns what was applied or raises
        KnobError. Called from a worker thread, while stats and status go on being called."""
        ...

    def accepted(self, knobs: dict[str, int]) -> None:
        """The daemon kept these values (they were applied before): a worker with a persistent
        config of its own writes them there; KnobError says why that failed."""
        ...

    def stats(self) -> StatsReport:
        """Cumulative counters and current gauges for a stats message."""
        ...

    def status(self) -> WorkerStatusBody:
        """The answer to a status request: identity and the knob values now."""
        ...


def bind_unix_socket(path: Path, group: int | None) -> socket.socket:
    """A listening Unix socket at `path`, mode 0600 (0660 and that group when given).

    A stale socket file left by a dead worker is replaced; any other file there is an
    error, never silently removed. The directory is created 0700 when missing.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # no window in which the socket is open to others
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    if group is not None:
        os.chown(path, -1, group)
        os.chmod(path, 0o660)
    sock.listen(64)
    sock.setblocking(False)
    return sock


class LineServer:
    """Serves JSON-line requests on a Unix socket inside a running asyncio loop (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        group: int | None = None,
        max_connections: int = 16,
        partial_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._group = group
        self._max_connections = max_connections
        self._partial_timeout = partial_timeout
        self._clock = clock
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.refused_peers = 0

    async def greet(self, writer: asyncio.StreamWriter) -> asyncio.Task[None] | None:  # noqa: ARG002 - a subclass's hook
        """Sends what a new connection is greeted with; may return a task that runs beside the
        connection's read loop (cancelled when it ends)."""
        return None

    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """The reply to one valid request."""
        raise NotImplementedError

    async def start(self) -> None:
        sock = bind_unix_socket(self.path, self._group)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_MESSAGE_BYTES + 1)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve_checked(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_checked(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        creds = peer_credentials(writer.get_extra_info("socket"))
        if not peer_allowed(creds, self._group, os.getuid()):
            self.refused_peers += 1
            log.warning("control: refused peer pid %d uid %d gid %d", creds.pid, creds.uid, creds.gid)
            await self.send(writer, nack(f"permission denied: uid {creds.uid} is not allowed on this socket"))
            return
        if len(self._connections) > self._max_connections:
            await self.send(writer, nack(f"too many control connections (limit {self._max_connections})"))
            return
        beside = await self.greet(writer)
        try:
            await self._read_loop(reader, writer)
        finally:
            if beside is not None:
                beside.cancel()

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        partial_since: float | None = None
        while True:
            timeout = None if partial_since is None else max(partial_since + self._partial_timeout - self._clock(), 0.0)
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
            except TimeoutError:
                await self.send(writer, nack(f"incomplete message for {self._partial_timeout:g} s; closing"))
                return
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    await self.send(writer, await self._answer_line(line))
            if len(buffer) > MAX_MESSAGE_BYTES:
                await self.send(writer, nack(f"message exceeds the limit of {MAX_MESSAGE_BYTES} bytes; closing"))
                return
            partial_since = (partial_since or self._clock()) if buffer else None

    async def _answer_line(self, line: bytes) -> dict[str, Any]:
        try:
            request = decode(line)
        except ProtocolError as exc:
            return nack(str(exc), exc.seq)
        if request["type"] == "ping":
            return message("pong", seq=request["seq"])
        return await self.answer(request)

    async def send(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        if writer.is_closing():
            raise ConnectionResetError("control connection closed")
        if writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            raise ConnectionResetError("control client is not reading; dropping it")
        writer.write(encode(reply))


class ControlServer(LineServer):
    """A worker's control socket: greets with the hello, streams stats every `stats_interval`
    seconds, and answers set and status through its handler."""

    def __init__(self, path: Path, handler: ControlHandler, *, stats_interval: float = 0.5, **options: Any) -> None:
        super().__init__(path, **options)
        self._handler = handler
        self._stats_interval = stats_interval

    async def greet(self, writer: asyncio.StreamWriter) -> asyncio.Task[None] | None:
        await self.send(writer, self._handler.hello())
        return asyncio.create_task(self._stream_stats(writer))

    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        kind, seq = request["type"], request.get("seq")
        if kind == "status" and "status" not in request:
            return message("status", seq=seq, status=self._handler.status())
        if kind == "set":
            try:
                # In a thread: a set may take seconds (a pool to allocate, a Triton model to
                # reload), and the stats stream and other connections go on meanwhile.
                applied = await asyncio.to_thread(self._handler.apply, request["knobs"])
            except KnobError as exc:
                return nack(str(exc), seq)
            return message("ack", seq=seq, applied=applied)
        if kind == "accepted":
            try:
                await asyncio.to_thread(self._handler.accepted, request["knobs"])
            except KnobError as exc:
                return nack(str(exc), seq)
            return message("ack", seq=seq, applied={})
        return nack(f"{kind} is not a request a worker accepts", seq)

    async def _stream_stats(self, writer: asyncio.StreamWriter) -> None:
        """Stats stamped with the monotonic clock, which the daemon shares (see protocol.py)."""
        try:
            while True:
                await asyncio.sleep(self._stats_interval)
                await self.send(writer, message("stats", t=time.monotonic(), stats=self._handler.stats()))
        except ConnectionError as exc:
            log.info("control: closing a connection: %s", exc)
            writer.close()  # ends the read loop too


class ServerThread:
    """Runs a LineServer in an event loop on a daemon thread of its own, so it serves
    beside any host program (a user's server, the daemon) without sharing its loop."""

    def __init__(self, server: LineServer, name: str) -> None:
        self.server = server
        self._name = name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    def start(self) -> None:
        """Binds and starts serving; raises what binding raised (e.g. a bad path)."""
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self.server.start())
        except BaseException as exc:  # noqa: BLE001 - handed to start() in the caller's thread
            self._start_error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.server.close())
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
