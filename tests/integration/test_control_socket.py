"""The control socket over real Unix sockets: an Agent with real knobs, real clients."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gputuned.control.client import ControlClient, ControlError
from gputuned.control.peers import PeerCredentials, peer_allowed
from gputuned.control.protocol import MAX_MESSAGE_BYTES, decode, encode, message
from gputuned.control.server import ControlServer, ServerThread, bind_unix_socket
from gputuned.worker.agent import Agent


class Server:
    """The settings a user's server would keep, and the agent exposing them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.max_batch_size = 1
        self.completed = 0
        self.agent = Agent(path, model="m", device="cpu", input_shape=[4], input_dtype="FP32", stats_interval=0.05)
        self.agent.knob("max_batch_size", default=1, minimum=1, maximum=64, apply=self._set_batch)
        self.agent.knob("streams", default=1, minimum=1, maximum=4, apply=lambda v: min(v, 3))
        self.agent.knob("pool_mb", default=0, minimum=0, maximum=100, apply=self._refuse_pool)
        self.agent.restart_only("interop_threads", 2)
        self.agent.stats_source(lambda: {"completed": self.completed})

    def _set_batch(self, value: int) -> None:
        self.max_batch_size = value

    @staticmethod
    def _refuse_pool(value: int) -> None:
        if value > 50:
            raise MemoryError("cannot pin that much")


@pytest.fixture
def server(tmp_path):
    instance = Server(tmp_path / "run" / "worker.sock")
    instance.agent.start()
    yield instance
    instance.agent.stop()


def socket_path(server: Server) -> Path:
    return server.path


def test_hello_declares_identity_and_knobs(server):
    with ControlClient(socket_path(server)) as client:
        hello = client.hello
    assert hello["worker"] == {
        "pid": os.getpid(),
        "kind": "agent",
        "model": "m",
        "device": "cpu",
        "input": {"shape": [4], "dtype": "FP32"},
    }
    assert hello["knobs"]["max_batch_size"] == {
        "type": "int",
        "value": 1,
        "min": 1,
        "max": 64,
        "live": True,
        "description": "",
        "title": "max_batch_size",
        "unit": "",
    }
    assert hello["restart_only"] == {"device": "cpu", "model": "m", "interop_threads": "2"}


def test_the_socket_and_its_directory_are_private(server):
    path = socket_path(server)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_set_applies_and_acks_what_was_actually_applied(server):
    with ControlClient(socket_path(server)) as client:
        assert client.set({"max_batch_size": 16, "streams": 4}) == {"max_batch_size": 16, "streams": 3}
    assert server.max_batch_size == 16
    assert server.agent.values == {"max_batch_size": 16, "streams": 3, "pool_mb": 0}


@pytest.mark.parametrize(
    ("knobs", "error"),
    [
        ({"max_batch_size": 0}, "max_batch_size=0 is below its minimum 1"),
        ({"max_batch_size": 65}, "max_batch_size=65 is above its maximum 64"),
        ({"batch": 2}, "unknown knob 'batch'"),
        ({"interop_threads": 4}, "interop_threads applies only at restart"),
        ({"device": 1}, "device applies only at restart"),
        ({"pool_mb": 60}, "pool_mb=60 could not be applied: cannot pin that much"),
    ],
)
def test_refused_sets_change_nothing(server, knobs, error):
    with ControlClient(socket_path(server)) as client:
        with pytest.raises(ControlError, match=error):
            client.set({"max_batch_size": 32, **knobs} if "max_batch_size" not in knobs else knobs)
        assert client.ping() < 1.0  # the connection is still usable
    if "pool_mb" not in knobs:
        assert server.max_batch_size == 1


def test_malformed_lines_get_a_nack_and_the_connection_carries_on(server):
    with ControlClient(socket_path(server)) as client:
        for raw, error in [
            (b"not json\n", "not valid JSON"),
            (b'{"v":1,"type":"set","seq":9,"knobs":{"streams":"2"}}\n', "knob 'streams' must be an integer"),
            (b'{"v":1,"type":"hello","worker":{},"knobs":{}}\n', "hello is not a request a worker accepts"),
            (b'{"v":7,"type":"ping","seq":1}\n', "unsupported protocol version 7"),
            (b"\xff\xff\n", "not valid UTF-8"),
        ]:
            client.send_raw(raw)
            reply = client.receive()
            while reply["type"] == "stats":
                reply = client.receive()
            assert reply["type"] == "nack" and error in reply["error"], reply
        assert client.set({"max_batch_size": 2}) == {"max_batch_size": 2}


def test_stats_stream_periodically(server):
    server.completed = 41
    with ControlClient(socket_path(server)) as client:
        first = client.next_stats(timeout=2)
        server.completed = 42
        second = client.next_stats(timeout=2)
    assert first["stats"] == {"completed": 41} or first["stats"] == {"completed": 42}
    assert second["stats"] == {"completed": 42} and second["t"] >= first["t"]


def raw_connection(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    return sock


def read_messages_until_closed(sock: socket.socket, limit_s: float = 10.0) -> list[dict]:
    data = b""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return [decode(line) for line in data.split(b"\n") if line]


def test_an_oversized_message_is_refused_and_that_connection_closed(server):
    sock = raw_connection(socket_path(server))
    try:
        sock.sendall(b"x" * (MAX_MESSAGE_BYTES + 100))
        replies = read_messages_until_closed(sock)
    finally:
        sock.close()
    assert any(r["type"] == "nack" and "exceeds the limit" in r["error"] for r in replies)
    with ControlClient(socket_path(server)) as client:
        assert client.set({"streams": 2}) == {"streams": 2}


def test_a_slowloris_partial_message_is_cut_off(tmp_path):
    handler = Server(tmp_path / "unused.sock").agent  # the agent's handler, served by a server with a short cut-off
    runner = ServerThread(ControlServer(tmp_path / "w.sock", handler, stats_interval=60, partial_timeout=0.3), "test")
    runner.start()
    try:
        sock = raw_connection(tmp_path / "w.sock")
        sock.sendall(b'{"v":1,"type":"pi')
        started = time.monotonic()
        replies = read_messages_until_closed(sock)
        elapsed = time.monotonic() - started
        sock.close()
        assert any("incomplete message" in r.get("error", "") for r in replies)
        assert elapsed < 5
    finally:
        runner.stop()


def test_connections_are_capped_and_the_cap_does_not_block_the_others(server):
    clients = [raw_connection(socket_path(server)) for _ in range(16)]
    try:
        extra = raw_connection(socket_path(server))
        replies = read_messages_until_closed(extra)
        extra.close()
        assert replies[0]["type"] == "nack" and "too many control connections" in replies[0]["error"]
    finally:
        for sock in clients:
            sock.close()
    time.sleep(0.2)
    with ControlClient(socket_path(server)) as client:
        assert client.set({"streams": 2}) == {"streams": 2}


def test_a_killed_connection_leaves_the_agent_serving(server):
    sock = raw_connection(socket_path(server))
    sock.sendall(b'{"v":1,"type":"set","seq":1,"knobs":{"max_batch_size":7}}\n')
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    with ControlClient(socket_path(server)) as client:
        assert client.ping() < 1.0


def test_a_stale_socket_file_is_replaced_but_another_file_is_not(tmp_path):
    stale = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(stale))
    sock.close()
    bind_unix_socket(stale, None).close()
    regular = tmp_path / "regular"
    regular.write_text("data")
    with pytest.raises(FileExistsError, match="is not a socket"):
        bind_unix_socket(regular, None)
    assert regular.read_text() == "data"


def test_peer_policy():
    me = os.getuid()
    assert peer_allowed(PeerCredentials(1, me, 1), None, me)
    assert peer_allowed(PeerCredentials(1, 0, 0), None, 12345)
    assert not peer_allowed(PeerCredentials(1, 4321, 4321), None, 12345)
    assert peer_allowed(PeerCredentials(1, 4321, 777), 777, 12345)


@pytest.mark.skipif(os.getuid() != 0, reason="dropping to another uid needs root")
@pytest.mark.parametrize("group_allowed", [False, True])
def test_a_peer_with_another_uid_is_refused_unless_in_the_group(group_allowed):
    nobody_uid, nobody_gid = 65534, 65534
    base = Path(tempfile.mkdtemp(prefix="gputuned-peer-"))  # pytest's tmp dirs are 0700: nobody could not enter
    base.chmod(0o755)
    path = base / "ctl" / "w.sock"
    agent = Agent(path, model="m", device="cpu", input_shape=[1], input_dtype="FP32", group=nobody_gid if group_allowed else None)
    agent.knob("streams", default=1, minimum=1, maximum=4, apply=lambda v: None)
    agent.start()
    try:
        path.parent.chmod(0o755)
        path.chmod(0o666)  # let the connection reach accept(), where SO_PEERCRED decides
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: become nobody, connect, report the first message
            try:
                os.close(read_end)
                os.setgroups([])
                os.setgid(nobody_gid)
                os.setuid(nobody_uid)
                sock = raw_connection(path)
                first = sock.recv(65536).split(b"\n")[0]
                os.write(write_end, first)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
                os.write(write_end, f"child failed: {exc!r}".encode())
            finally:
                os._exit(0)
        os.close(write_end)
        first_line = b""
        while chunk := os.read(read_end, 65536):
            first_line += chunk
        os.close(read_end)
        os.waitpid(pid, 0)
    finally:
        agent.stop()
        shutil.rmtree(base)
    first = decode(first_line)
    if group_allowed:
        assert first["type"] == "hello"
    else:
        assert first["type"] == "nack" and f"uid {nobody_uid} is not allowed" in first["error"]


class Sender:
    """A Unix socket server that sends scripted bytes to whoever connects (for the client side)."""

    def __init__(self, path: Path, payload: bytes) -> None:
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(str(path))
        self._listener.listen(1)
        self._thread = threading.Thread(target=self._serve, args=(payload,), daemon=True)
        self._thread.start()

    def _serve(self, payload: bytes) -> None:
        connection, _ = self._listener.accept()
        try:
            connection.sendall(payload)
        finally:
            connection.close()
            self._listener.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.binary(max_size=300)
    | st.builds(lambda m: encode(m), st.sampled_from([message("ping", seq=1), message("nack", error="x")]))
)
def test_the_client_side_turns_any_bytes_into_a_control_error_or_a_hello(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("c") / "s.sock"
    Sender(path, payload)
    client = ControlClient(path, timeout=2)
    try:
        client.connect()
    except ControlError:
        return
    finally:
        client.close()
    raise AssertionError(f"{payload!r} was accepted as a hello")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=5))
def test_the_worker_side_survives_any_bytes(server, chunks):
    sock = raw_connection(socket_path(server))
    try:
        for chunk in chunks:
            sock.sendall(chunk)
        sock.sendall(b"\n")
    finally:
        sock.close()
    with ControlClient(socket_path(server)) as client:
        assert client.ping() < 1.0
