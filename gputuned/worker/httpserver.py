"""HTTP/1.1 for the worker's serving path: httptools' parser under an asyncio protocol.

Why not aiohttp, which the load generator uses: for every request aiohttp builds a request object,
a task to run its handler, a response object and its header multidicts. Measured on one
core that was ~45 us of the ~110 us of event-loop CPU an inference request cost, and on a
host where one core both serves and computes, every microsecond of it is taken from the
model (bench/serving.py). Here httptools (llhttp, Node.js's parser, as uvicorn uses it)
parses, and a complete request goes to a handler that answers through a callback, now or
later: an inference request costs no coroutine and no task, and its answer is written
from its batch's completion.

What a connection does: keep-alive (HTTP/1.1's default, HTTP/1.0's on request); pipelined
requests answered in order; chunked request bodies; Expect: 100-continue; HEAD for GET
routes; a body over the limit refused on its declared length before it is read (413, and
the connection closed so its unread body is not taken for a request); headers over their
limit (431); a malformed request answered 400 and the connection closed; an upgrade
request answered in HTTP/1.1 (the upgrade ignored, as RFC 9110 allows); back-pressure: a
connection is not read while its transport's write buffer is full or it holds
MAX_PIPELINED unanswered requests; a keep-alive connection closed after `keepalive`
seconds idle, and one that takes longer than `read_timeout` to send a whole request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import http
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast
from urllib.parse import unquote

import httptools

log = logging.getLogger(__name__)

MAX_PIPELINED = 16  # unanswered requests per connection before it is no longer read
MAX_HEADER_BYTES = 64 * 1024  # the request line and headers together
KEEPALIVE_SECONDS = 75.0  # nginx's default idle keep-alive
READ_TIMEOUT_SECONDS = 60.0  # from a request's first byte to its last
LINGER_SECONDS = 10.0  # aiohttp's lingering_time: reading a refused body before closing on it
SWEEP_SECONDS = 1.0  # how often idle and slow connections are looked for
READ_BUFFER_BYTES = 256 * 1024  # what one read from a connection may take (libuv's own size)
RETRY_AFTER = (("Retry-After", "1"),)  # on every 503: the worker may take the request a second later
OUT_OF_MEMORY = "out of memory while reading the request; retry later or send fewer items"


@dataclass(slots=True)
class Request:
    method: str  # HEAD arrives as GET, with head_only set
    path: str  # percent-decoded, without the query
    headers: Mapping[bytes, bytes]  # as sent, names in lower case; a repeated header keeps its last value
    body: bytes | bytearray
    received: float  # time.perf_counter() at its first byte (every time here is perf_counter's)
    head_only: bool = False


@dataclass(slots=True)
class Response:
    """An answer, built once per request and not changed after (not frozen: a frozen
    dataclass's __init__ costs four times a plain one's, on every request)."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  # close the connection once this is written


Respond = Callable[[Response], None]
# Answers `request` exactly once through `respond`, at once or later, in the event loop's thread.
Handler = Callable[[Request, Respond], None]


def json_response(document: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = (), close: bool = False) -> Response:
    return Response(status, json.dumps(document).encode(), "application/json", headers, close)


def error_response(status: int, message: str, headers: tuple[tuple[str, str], ...] = (), close: bool = False) -> Response:
    """An error as the v2 protocol answers it: a JSON object whose `error` says what and why."""
    return json_response({"error": message}, status, headers, close)


_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}
_METHODS = {name.encode(): name for name in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}


def serialize(response: Response, head_only: bool, keep_alive: bool) -> tuple[bytes, bytes]:
    """The status line and headers, and the body (empty for HEAD)."""
    head = _head(response.status, response.content_type, len(response.body), response.headers, keep_alive)
    return head, b"" if head_only else response.body


@functools.lru_cache(maxsize=256)
def _head(status: int, content_type: str, length: int, headers: tuple[tuple[str, str], ...], keep_alive: bool) -> bytes:
    """A response's status line and headers, built once: the answers to one client's
    inference requests are alike but for their bodies' bytes."""
    extra = b"".join(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers)
    return b"HTTP/1.1 %d %s\r\nServer: gputuned\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n" % (
        status,
        _REASONS.get(status, b"Unknown"),
        content_type.encode("latin-1"),
        length,
        extra,
        b"" if keep_alive else b"Connection: close\r\n",
    )


@dataclass(frozen=True, slots=True)
class _KnownHead:
    """A request's head (its request line and headers) as llhttp parsed it, kept so that the
    same bytes again need no parse: a client sends every request of one kind with the same
    head, and the parser's callbacks (a dozen calls into Python) were half of what the
    HTTP layer cost a request. Same bytes, same parse: the replay takes nothing llhttp did
    not take, and the Content-Length it frames the body by is the one llhttp framed it by."""

    head: bytes  # exactly as it arrived, ending at its first (and only) empty line
    size: int  # the head and its body of Content-Length bytes
    method: str
    url: bytes
    # Read-only, so every replayed request shares it (a copy each was 1.5% of the loop's time).
    # Keep-alive: a connection's last request is never learned.
    headers: MappingProxyType[bytes, bytes]


# Heads never replayed: what they ask for (a 100 Continue, chunked framing, an upgrade)
# is the parser's to handle each time.
_PARSED_EVERY_TIME = (b"expect", b"transfer-encoding", b"upgrade")


class _Answer:
    """One request's place in its connection's answer order."""

    __slots__ = ("connection", "head_only", "keep_alive", "response")

    def __init__(self, connection: HttpConnection, head_only: bool, keep_alive: bool) -> None:
        self.connection = connection
        self.head_only = head_only
        self.keep_alive = keep_alive
        self.response: Response | None = None

    def respond(self, response: Response) -> None:
        if self.response is None:  # a second answer to one request is a bug; the first one stands
            self.response = response
            self.connection.flush()


@functools.lru_cache(maxsize=256)
def _path_of(url: bytes) -> str:
    """A request target's path, percent-decoded, without the query (a client sends the same few again and again)."""
    path = url.partition(b"?")[0].decode("latin-1")
    return unquote(path) if "%" in path else path


class _Refusal(Exception):
    """Ends the parse of a request the connection answers itself (it then closes)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class HttpConnection(asyncio.BufferedProtocol):
    """One client connection: parses its requests, hands each to the handler, writes the answers in order.

    The event loop reads straight into the server's one read buffer (a buffered protocol),
    not into a new bytes object per read: the parser copies out what it keeps (a body
    arriving in one piece is copied once, by the parser), and the loop's thread parses
    each read before it makes the next, so every connection can share the buffer.

    A read that begins with the head of this connection's last request parsed whole, byte
    for byte, and holds its body, is taken without the parser (`_KnownHead`)."""

    def __init__(self, handler: Handler, server: HttpServer) -> None:
        self._handler = handler
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._answers: collections.deque[_Answer] = collections.deque()
        self._reading = True
        self._write_paused = False
        self._closing = False
        self._linger = False  # close lingering once the refusal is written
        self.last_active = time.perf_counter()
        self.request_started: float | None = None  # the current request's first byte, until it is whole
        self._known: _KnownHead | None = None
        self._completed = 0  # requests the parser completed (a read that completes just one may teach its head)
        self._reset_message()

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._body: bytes | bytearray = b""
        self._keep_alive = True
        self._method = ""

    @property
    def in_flight(self) -> int:
        return len(self._answers)

    # --- asyncio.BufferedProtocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports quack, not subclass
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - asyncio.Protocol's signature
        self._closing = True
        self._answers.clear()  # answers still to come are dropped: nobody is there to read them
        self._server.connections.discard(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def get_buffer(self, sizehint: int) -> memoryview:  # noqa: ARG002 - asyncio.BufferedProtocol's signature
        return self._server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        taken = 0
        if self._known is not None and self.request_started is None:  # the parser is between requests
            taken = self._replay(self._known, nbytes)
        if taken < nbytes:
            self._parse(self._server.read_buffer[taken:nbytes])

    def _replay(self, known: _KnownHead, nbytes: int) -> int:
        """Hands the handler each whole request at the start of the read that has `known`'s
        head; returns the bytes taken (the rest, if any, is the parser's)."""
        buffer, data = self._server.read_buffer, self._server.read_bytes
        head, size, body_starts = known.head, known.size, len(known.head)
        now = self.last_active = time.perf_counter()
        taken = 0
        while not self._closing and nbytes - taken >= size and data.startswith(head, taken):
            body = bytes(buffer[taken + body_starts : taken + size])
            taken += size
            self._dispatch(known.method, known.url, known.headers, body, True, now)
        return nbytes if self._closing else taken  # past an answer that closes, nothing more is read

    def _parse(self, data: memoryview) -> None:
        """Parses what arrived; requests it completes go to the handler."""
        self.last_active = time.perf_counter()
        if self._closing:
            return
        between_requests, completed = self.request_started is None, self._completed
        try:
            self._parser.feed_data(data)
            if between_requests and self.request_started is None and self._completed == completed + 1:
                self._learn(data)
        except httptools.HttpParserUpgrade as upgrade:
            # The request asking to upgrade was taken whole; what follows is more HTTP/1.1.
            self._parser = httptools.HttpRequestParser(self)
            self._parse(data[upgrade.args[0] :])
        except _Refusal as refusal:
            self._refuse(refusal.response)
        except httptools.HttpParserError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, _Refusal):
                self._refuse(cause.response)
            else:
                self._refuse(error_response(400, f"malformed HTTP request: {exc}", close=True))

    # --- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset_message()
        self.request_started = time.perf_counter()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        self._headers[name.lower()] = value  # decoded by whoever reads it: most never are

    def on_headers_complete(self) -> None:
        if self._closing:  # pipelined behind an answer that closes the connection
            return
        parser = self._parser
        method = parser.get_method()
        self._method = _METHODS.get(method) or method.decode("latin-1")
        self._keep_alive = parser.should_keep_alive()
        declared = self._headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._server.max_body_bytes:
            raise _Refusal(self._too_large())
        if self._headers.get(b"expect", b"").lower() == b"100-continue" and not self._answers and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # only at the head of the answer order

    def on_body(self, body: bytes) -> None:
        if self._closing:
            return
        if not self._body:
            self._body = body  # most bodies arrive in one piece: kept as they are, no copy
            return
        if len(self._body) + len(body) > self._server.max_body_bytes:
            raise _Refusal(self._too_large())
        try:
            if isinstance(self._body, bytes):
                self._body = bytearray(self._body)
            self._body += body
        except MemoryError:
            raise _Refusal(error_response(503, OUT_OF_MEMORY, RETRY_AFTER, close=True)) from None

    def on_message_complete(self) -> None:
        if self._closing:
            return
        if len(self._body) > self._server.max_body_bytes:  # one piece over the limit
            raise _Refusal(self._too_large())
        received, self.request_started = self.request_started, None
        assert received is not None  # set by on_message_begin
        self._completed += 1
        if not self._keep_alive:
            self._known = None  # the connection's last request: what follows is the parser's to refuse
        self._dispatch(self._method, self._url, self._headers, self._body, self._keep_alive, received)

    def _learn(self, data: memoryview) -> None:
        """Keeps the head of the one request `data` held, whole and nothing else, for
        `_replay`: only a head that ends at its first empty line, with CRLF line ends and
        a Content-Length that is its body's, so no other reading of the same bytes exists;
        and not a connection's last request (the parser refuses what follows one)."""
        headers, body_size = self._headers, len(self._body)
        if self._closing or not self._keep_alive or any(name in headers for name in _PARSED_EVERY_TIME):
            return
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) != body_size:
            return
        head = bytes(data[: len(data) - body_size])
        if head.find(b"\r\n\r\n") != len(head) - 4 or head.count(b"\n") != head.count(b"\r\n"):
            return  # bytes after the body (the parser skips stray CRLFs), or bare LF line ends
        self._known = _KnownHead(head, len(data), self._method, self._url, MappingProxyType(dict(headers)))

    def _dispatch(
        self, method: str, url: bytes, headers: Mapping[bytes, bytes], body: bytes | bytearray, keep_alive: bool, received: float
    ) -> None:
        """A whole request, parsed or replayed, to the handler."""
        answer = _Answer(self, method == "HEAD", keep_alive)
        self._answers.append(answer)
        request = Request("GET" if answer.head_only else method, _path_of(url), headers, body, received, answer.head_only)
        if len(self._answers) >= MAX_PIPELINED:
            self._update_reading()
        try:
            self._handler(request, answer.respond)
        except Exception:  # a handler's bug is answered 500; the connection and the server go on
            log.exception("handler failed on %s %s", request.method, request.path)
            answer.respond(error_response(500, "internal error while handling the request; see the worker's log"))

    # --- answers ------------------------------------------------------------------------

    def _count_header_bytes(self, count: int) -> None:
        self._header_bytes += count
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _Refusal(error_response(431, f"request line and headers exceed {MAX_HEADER_BYTES} bytes", close=True))

    def _too_large(self) -> Response:
        return error_response(413, f"request body exceeds the limit of {self._server.max_body_bytes} bytes", close=True)

    def _refuse(self, response: Response) -> None:
        """Answers a request the parser could not take, after those before it, and closes
        lingering: the client may still be sending the body it was refused."""
        answer = _Answer(self, False, False)
        self._answers.append(answer)
        self._closing = True  # no more requests are parsed from this connection
        self._linger = True
        self._server.refused(_path_of(self._url), response)
        answer.respond(response)

    def flush(self) -> None:
        """Writes the answers that are ready, in request order."""
        transport = self._transport
        answers = self._answers
        while answers and answers[0].response is not None:
            answer = answers.popleft()
            response = answer.response
            assert response is not None and transport is not None
            keep_alive = answer.keep_alive and not response.close
            transport.writelines(serialize(response, answer.head_only, keep_alive))
            if not keep_alive:
                self._closing = True
                answers.clear()
                if self._linger and transport.can_write_eof():
                    self._close_lingering(transport)
                else:
                    transport.close()  # after what is buffered is written
                return
        self.last_active = time.perf_counter()
        if not self._reading:
            self._update_reading()

    def _close_lingering(self, transport: asyncio.Transport) -> None:
        """Ends the answer (FIN) but reads on, discarding, until the client closes or
        LINGER_SECONDS pass: closing with its unread body in the socket would send a
        reset, and the client would lose the answer it was refused with (aiohttp's and
        nginx's lingering close)."""
        transport.write_eof()
        transport.resume_reading()
        self._reading = True
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def eof_received(self) -> bool:
        return False  # the client is done sending: close (a lingering close ends here)

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._linger:
            return  # lingering: reading on, to discard what a refused client still sends
        wanted = not self._write_paused and len(self._answers) < MAX_PIPELINED and not self._closing
        if wanted != self._reading:
            self._reading = wanted
            if wanted:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class HttpServer:
    """Serves `handler` on a listening socket until `shutdown`."""

    def __init__(
        self,
        handler: Handler,
        max_body_bytes: int,
        refused: Callable[[str, Response], None] = lambda _path, _response: None,
        keepalive: float = KEEPALIVE_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
    ) -> None:
        """`refused` hears of every request this layer answers itself, with the path it
        had (possibly empty) and the refusal: oversize or malformed (4xx), or no memory
        left to read it (503)."""
        self._handler = handler
        self.refused = refused
        self.max_body_bytes = max_body_bytes
        self._keepalive = keepalive
        self._read_timeout = read_timeout
        self.connections: set[HttpConnection] = set()
        self.read_bytes = bytearray(READ_BUFFER_BYTES)  # every connection's reads (HttpConnection)
        self.read_buffer = memoryview(self.read_bytes)
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, listener: Any) -> None:
        """Serves on `listener`, a bound listening socket."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: HttpConnection(self._handler, self), sock=listener)
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        now = time.perf_counter()
        for connection in list(self.connections):
            started = connection.request_started
            if started is not None and now - started > self._read_timeout:
                connection.close()  # too slow to send one request (slowloris)
            elif started is None and not connection.in_flight and now - connection.last_active > self._keepalive:
                connection.close()
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self._sweep)

    async def shutdown(self, timeout: float) -> None:
        """Stops listening, lets answers in flight be written (up to `timeout`), then closes
        every connection and waits for them to go."""
        if self._server is not None:
            self._server.close()
        deadline = time.perf_counter() + timeout
        while any(c.in_flight for c in self.connections) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.close()
        while self.connections and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), max(deadline - time.perf_counter(), 0.1))
