"""The worker's HTTP/1.1 layer over real loopback sockets: order, framing, limits and timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
import torch

from gputuned.worker import httpserver, server
from gputuned.worker.batcher import DynamicBatcher
from gputuned.worker.httpserver import HttpServer, Request, Respond, Response, json_response
from gputuned.worker.models import load_model, one_input
from gputuned.worker.server import InferenceApp
from gputuned.worker.stats import WorkerStats

pytestmark = pytest.mark.integration  # starts threads, processes or servers

LIMIT = 1024


class Recorder:
    """A handler that keeps every request; answers at once with its body echoed, or holds the answer."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.requests: list[Request] = []
        self.held: list[Respond] = []
        self.refusals: list[tuple[str, int]] = []

    def handle(self, request: Request, respond: Respond) -> None:
        self.requests.append(request)
        if request.path == "/boom":
            raise RuntimeError("a bug in a handler")
        if self.hold:
            self.held.append(respond)
        else:
            respond(Response(200, bytes(request.body) or request.path.encode(), "text/plain"))

    def refused(self, path: str, response: Response) -> None:
        self.refusals.append((path, response.status))


@contextlib.asynccontextmanager
async def serving(recorder: Recorder, **options: float) -> AsyncIterator[int]:
    import socket

    server = HttpServer(recorder.handle, LIMIT, recorder.refused, **options)
    listener = socket.create_server(("127.0.0.1", 0))
    await server.start(listener)
    try:
        yield listener.getsockname()[1]
    finally:
        await server.shutdown(timeout=2.0)


async def read_response(reader: asyncio.StreamReader, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:] if line)}
    length = 0 if head_only or status == 100 else int(headers["content-length"])
    return status, headers, await asyncio.wait_for(reader.readexactly(length), 5)


async def exchange(recorder: Recorder, raw: bytes, answers: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Sends `raw` down one connection and reads `answers` answers."""
    async with serving(recorder) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        got = [await read_response(reader) for _ in range(answers)]
        writer.close()
        return got


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


def test_pipelined_requests_are_answered_in_request_order_whatever_order_they_finish_in():
    async def scenario():
        recorder = Recorder(hold=True)
        async with serving(recorder) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("/a") + get("/b") + get("/c"))
            while len(recorder.held) < 3:
                await asyncio.sleep(0.01)
            for index in (2, 0, 1):  # the last one finishes first
                recorder.held[index](Response(200, recorder.requests[index].path.encode(), "text/plain"))
            bodies = [(await read_response(reader))[2] for _ in range(3)]
            writer.close()
            return bodies

    assert run(scenario()) == [b"/a", b"/b", b"/c"]


def test_keep_alive_serves_many_requests_on_one_connection_and_http_1_0_closes():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answers = []
            for path in ("/one", "/two"):
                writer.write(get(path))
                answers.append(await read_response(reader))
            writer.write(b"GET /old HTTP/1.0\r\n\r\n")
            old = await read_response(reader)
            return answers, old, await closed(reader)

    answers, old, was_closed = run(scenario())
    assert [body for _, _, body in answers] == [b"/one", b"/two"]
    assert all("connection" not in headers for _, headers, _ in answers)
    assert old[0] == 200 and old[1]["connection"] == "close" and was_closed


def test_a_chunked_body_arrives_whole_and_a_percent_encoded_path_decoded():
    recorder = Recorder()
    raw = b"POST /a%20b?x=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    ((status, _, body),) = run(exchange(recorder, raw, 1))
    assert (status, body, recorder.requests[0].path) == (200, b"hello world", "/a b")


def test_requests_arriving_in_pieces_on_many_connections_keep_their_own_bytes():
    """Every connection reads into the server's one buffer: what a request keeps must be its own copy."""

    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as port:
            streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            requests = [b"POST /p%d HTTP/1.1\r\nContent-Length: 8\r\n\r\nbody-%03d" % (i, i) for i in range(3)]
            for start, end in ((0, 10), (10, 30), (30, 45), (45, None)):  # each connection's next piece, in turn
                for (_, writer), request in zip(streams, requests):
                    writer.write(request[start:end])
                    await writer.drain()
                    await asyncio.sleep(0.01)  # a read of its own
            answers = [(await read_response(reader))[2] for reader, _ in streams]
            for _, writer in streams:
                writer.close()
            return answers, [(r.path, bytes(r.body)) for r in recorder.requests]

    answers, requests = run(scenario())
    assert answers == [b"body-000", b"body-001", b"body-002"]
    assert sorted(requests) == [("/p0", b"body-000"), ("/p1", b"body-001"), ("/p2", b"body-002")]


def test_expect_100_continue_is_answered_before_the_body_is_sent():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
            interim = await read_response(reader)
            writer.write(b"data")
            final = await read_response(reader)
            writer.close()
            return interim[0], final

    interim, (status, _, body) = run(scenario())
    assert (interim, status, body) == (100, 200, b"data")


def test_head_gets_the_headers_of_get_and_no_body():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n" + get("/next"))
            head = await read_response(reader, head_only=True)
            following = await read_response(reader)
            writer.close()
            return head, following, recorder.requests[0]

    (status, headers, body), following, request = run(scenario())
    assert status == 200 and headers["content-length"] == "2" and body == b""
    assert following[2] == b"/next"  # the next answer starts where HEAD's headers end
    assert request.method == "GET" and request.head_only


def test_an_oversize_body_is_refused_on_its_declared_length_and_the_client_still_reads_the_refusal():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            size = 8 * 1024 * 1024
            writer.write(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
            writer.write(b"x" * size)  # the body keeps coming; the server reads it away while it lingers
            answer = await read_response(reader)
            return answer, await closed(reader), recorder.requests, recorder.refusals

    (status, headers, body), was_closed, handled, refusals = run(scenario())
    assert status == 413 and headers["connection"] == "close" and was_closed
    assert json.loads(body)["error"] == f"request body exceeds the limit of {LIMIT} bytes"
    assert handled == [] and refusals == [("/infer", 413)]


def test_a_chunked_body_over_the_limit_is_refused_as_it_grows():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            chunk = b"%x\r\n%s\r\n" % (600, b"y" * 600)
            writer.write(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + chunk)
            return (await read_response(reader))[0], await closed(reader)

    assert run(scenario()) == (413, True)


@pytest.mark.parametrize(
    ("raw", "status", "error"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "malformed HTTP request"),
        (b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400, "malformed HTTP request"),
        (get("/", "X-Big: " + "z" * (httpserver.MAX_HEADER_BYTES + 1) + "\r\n"), 431, "exceed 65536 bytes"),
    ],
)
def test_a_malformed_request_is_answered_with_a_json_error_and_the_connection_closed(raw, status, error):
    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("/before") + raw + get("/after"))
            before = await read_response(reader)
            refusal = await read_response(reader)
            return before[2], refusal, await closed(reader), [r.path for r in recorder.requests]

    before, (got_status, headers, body), was_closed, paths = run(scenario())
    assert before == b"/before" and got_status == status and error in json.loads(body)["error"]
    assert headers["content-type"] == "application/json" and was_closed
    assert paths == ["/before"]  # nothing after the malformed request was taken


def test_a_handler_that_raises_is_answered_500_and_the_connection_goes_on():
    failed, fine = run(exchange(Recorder(), get("/boom") + get("/fine"), 2))
    assert (failed[0], fine[2]) == (500, b"/fine")


def test_an_upgrade_request_is_answered_in_http_1_1_and_the_connection_goes_on():
    upgrade = get("/u", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n")
    answers = run(exchange(Recorder(), upgrade + get("/after"), 2))
    assert [(status, body) for status, _, body in answers] == [(200, b"/u"), (200, b"/after")]


def test_a_connection_with_too_many_unanswered_requests_is_not_read_until_answers_go_out():
    async def scenario():
        recorder = Recorder(hold=True)
        async with serving(recorder) as port:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for index in range(httpserver.MAX_PIPELINED + 8):
                writer.write(get(f"/{index}"))
                await writer.drain()
                await asyncio.sleep(0.005)  # separate reads, so that reading can pause between them
            await asyncio.sleep(0.2)
            taken_while_full = len(recorder.requests)
            for respond in list(recorder.held):
                respond(Response(200, b"", "text/plain"))
            await asyncio.sleep(0.2)
            writer.close()
            return taken_while_full, len(recorder.requests)

    taken_while_full, taken_after = run(scenario())
    assert taken_while_full == httpserver.MAX_PIPELINED
    assert taken_after == httpserver.MAX_PIPELINED + 8


def test_idle_and_slow_connections_are_closed_and_a_busy_one_is_not(monkeypatch):
    monkeypatch.setattr(httpserver, "SWEEP_SECONDS", 0.05)

    async def scenario():
        recorder = Recorder(hold=True)
        async with serving(recorder, keepalive=0.3, read_timeout=0.3) as port:
            idle_reader, _ = await asyncio.open_connection("127.0.0.1", port)
            slow_reader, slow = await asyncio.open_connection("127.0.0.1", port)
            slow.write(b"GET /slow HTTP/1.1\r\nHo")  # and never the rest
            busy_reader, busy = await asyncio.open_connection("127.0.0.1", port)
            busy.write(get("/busy"))
            await asyncio.sleep(0.8)
            recorder.held[0](json_response({"done": True}))  # answered after twice the idle limit
            answer = await read_response(busy_reader)
            return await closed(idle_reader), await closed(slow_reader), answer[0]

    assert run(scenario()) == (True, True, 200)


def test_the_worker_counts_the_layers_refusals_of_inference_requests_by_whose_fault_they_are():
    model = load_model("torch.nn:Identity", torch.device("cpu"), one_input((2,)), name="identity")
    stats = WorkerStats(lambda: 0, lambda: 1)
    app = InferenceApp(model, DynamicBatcher(8, lambda: 1, lambda: 0), stats, 8)
    app.refused("/v2/models/identity/infer", httpserver.error_response(413, "too large"))
    app.refused("/v2/models/identity/infer", httpserver.error_response(503, httpserver.OUT_OF_MEMORY))
    app.refused("/v2/health/ready", httpserver.error_response(400, "malformed"))  # not an inference request
    counts = stats.snapshot()
    assert (counts["requests"], counts["rejected"], counts["refused"]) == (2, 1, 1)


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def test_requests_with_the_head_of_the_one_before_are_taken_without_the_parser_and_keep_their_own_bodies(monkeypatch):
    parsed = []
    parser_begins = httpserver.HttpConnection.on_message_begin
    monkeypatch.setattr(httpserver.HttpConnection, "on_message_begin", lambda self: (parsed.append(1), parser_begins(self)))

    async def scenario():
        async with serving(Recorder()) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answers = []
            for index in range(12):  # one read each
                writer.write(post("/echo", b"body-%03d" % index))
                answers.append((await read_response(reader))[2])
            writer.write(b"".join(post("/echo", b"many-%03d" % index) for index in range(4)))  # one read, pipelined
            answers += [(await read_response(reader))[2] for _ in range(4)]
            writer.close()
            return answers

    answers = run(scenario())
    assert answers == [b"body-%03d" % i for i in range(12)] + [b"many-%03d" % i for i in range(4)]
    assert len(parsed) < 4  # the first request's head was learned; the others were replayed


class FakeTransport:
    """What HttpConnection asks of an asyncio transport, writes kept (the differential test's seam)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def writelines(self, pieces: tuple[bytes, ...]) -> None:
        self.written.append(b"".join(pieces))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.mark.parametrize("seed", range(16))
def test_a_replayed_head_frames_every_stream_exactly_as_the_parser_does(seed):
    """Streams of repeated, varied, chunked and pipelined requests, stray CRLFs, a last
    request and malformed bytes, cut at random, answered at once or held: a connection that
    replays known heads hands the handler the same requests, and writes the same answers,
    as one that parses everything."""
    import random

    chooser = random.Random(seed)
    same = [post("/m/infer", bytes([65 + i]) * 16) for i in range(6)]  # one head, bodies of one length
    other = [
        post("/m/infer", b"x" * 17),  # another Content-Length
        post("/m/infer", b"y" * 16, "X-Id: 7\r\n"),
        post("/m/infer", b"z" * 16, "Expect: 100-continue\r\n"),
        b"POST /m/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST /m/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        get("/v2/health/ready"),
        post("/m/infer", b"\r\n\r\nPOST /m/infer HTTP/1.1\r\n"),  # a body that looks like a head
    ]
    pieces: list[bytes] = []
    while len(pieces) < 60:  # runs of one request, as clients send them, some with a stray CRLF after
        piece = chooser.choice(same if chooser.random() < 0.5 else other)
        for _ in range(chooser.randint(1, 4)):
            pieces += [piece, b"\r\n"] if chooser.random() < 0.2 else [piece]
    if seed % 3 == 0:
        pieces.insert(chooser.randrange(30, len(pieces)), b"POST /m HTTP/1.1\r\nContent-Length: x\r\n\r\n")  # malformed
    last = post("/m/infer", b"A" * 16, "Connection: close\r\n")  # the last request a connection takes
    if seed % 2 == 1:  # answers held, so the connection is open when requests follow its last: the same one, or a known one
        at = chooser.randrange(30, len(pieces))
        pieces[at:at] = [last, last] if seed % 4 == 1 else [same[0], last, same[0]]
    stream = b"".join(pieces)
    boundaries = [sum(map(len, pieces[:index])) for index in range(1, len(pieces))]
    # Reads end mostly where a request does (as clients write them), sometimes anywhere; always around a last one.
    ends = {b for index, b in enumerate(boundaries, 1) if chooser.random() < 0.7 or last in (pieces[index - 1], pieces[index])}
    cuts = sorted(ends | set(chooser.sample(range(1, len(stream)), 10)))

    def serve(replay: bool) -> tuple[list[tuple[str, str, dict[bytes, bytes], bytes]], list[bytes]]:
        recorder = Recorder(hold=seed % 2 == 1)
        server = HttpServer(recorder.handle, LIMIT, recorder.refused)
        connection = httpserver.HttpConnection(recorder.handle, server)
        if not replay:
            connection._learn = lambda data: None  # never learns a head: the parser takes every request
        transport = FakeTransport()
        connection.connection_made(transport)
        for start, end in zip([0, *cuts], [*cuts, len(stream)]):
            server.read_buffer[: end - start] = stream[start:end]
            connection.buffer_updated(end - start)
        requests = [(r.method, r.path, r.headers, bytes(r.body)) for r in recorder.requests]
        return requests, transport.written

    assert serve(replay=True) == serve(replay=False)
    assert len(serve(replay=False)[0]) >= 20


def test_an_inference_path_once_routed_skips_the_model_check_and_others_are_still_routed_in_full():
    async def scenario():
        model = load_model("torch.nn:Identity", torch.device("cpu"), one_input((2,)), name="identity")
        stats = WorkerStats(lambda: 0, lambda: 1)
        batcher = DynamicBatcher(1000, lambda: 1, lambda: 0)
        app = InferenceApp(model, batcher, stats, 8)
        app.ready = True
        body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}).encode()
        answers: list[int] = []

        def send(method: str, path: str) -> None:
            app.handle(Request(method, path, {}, body, 0.0), lambda response: answers.append(response.status))

        for slashes in range(40):  # as many spellings of the one path as a client cares to send
            send("POST", "/v2/models/identity/infer" + "/" * slashes)
        send("POST", "/v2/models/identity/versions/2/infer")
        send("POST", "/v2/models/other/infer")
        send("GET", "/v2/models/identity/infer")
        return answers, batcher.queued_items, len(app._infer_paths)

    answers, queued, remembered = run(scenario())
    assert (answers, queued) == ([404, 404, 405], 40)
    assert remembered == server.KNOWN_INFER_PATHS  # bounded, whatever a client sends
