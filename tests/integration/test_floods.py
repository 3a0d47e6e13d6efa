"""Floods: malformed and oversize HTTP requests, and a control socket flood, against a serving worker.

Each test prints what it measured: the valid traffic's p99 before and during the flood,
what the flood got back, and what the limits did.
"""

from __future__ import annotations

import asyncio
import collections
import json
import multiprocessing
import socket
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from gputuned.control.client import ControlClient
from gputuned.control.protocol import MAX_MESSAGE_BYTES
from gputuned.daemon.status import worker_entry
from gputuned.loadgen import LoadPlan, LoadResult, run_load
from gputuned.testing.processes import running_supervising_daemon, running_worker

pytestmark = pytest.mark.integration

MODEL = "resnet-mini"
GOOD = {"name": "input", "datatype": "FP32", "shape": [1, 3, 64, 64], "data": [0.0] * (3 * 64 * 64)}
# (path, body, headers): each must get a 4xx.
BAD_REQUESTS = [
    (f"/v2/models/{MODEL}/infer", b"{not json", {}),
    (f"/v2/models/{MODEL}/infer", b"[1]", {}),
    ("/v2/models/other/infer", json.dumps({"inputs": [GOOD]}).encode(), {}),
    (f"/v2/models/{MODEL}/infer", json.dumps({"inputs": [{**GOOD, "shape": [1, 3, 32, 32]}]}).encode(), {}),
    (f"/v2/models/{MODEL}/infer", json.dumps({"inputs": [{**GOOD, "data": [1.0]}]}).encode(), {}),
    (f"/v2/models/{MODEL}/infer", b"{}", {"Inference-Header-Content-Length": "99"}),
    (f"/v2/models/{MODEL}/infer", b"\xff" * 4096, {"Content-Type": "application/octet-stream"}),
]
OVERSIZE = (f"/v2/models/{MODEL}/infer", b"x" * (65 * 1024 * 1024), {})
WINDOW = 8.0
CLIENTS = 4


def valid_load(url: str, seconds: float) -> LoadResult:
    return asyncio.run(run_load(LoadPlan(url=url, concurrency=CLIENTS, requests=10**6, duration=seconds)))


async def http_flood(base: str, rate: float, seconds: float, oversize_every: int) -> collections.Counter:
    """Bad requests at `rate` per second (every `oversize_every`-th a 65 MiB body); status counts."""
    statuses: collections.Counter = collections.Counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def send(index: int) -> None:
            path, body, headers = (
                OVERSIZE if index % oversize_every == oversize_every - 1 else BAD_REQUESTS[index % len(BAD_REQUESTS)]
            )
            try:
                async with session.post(base + path, data=body, headers=headers) as response:
                    await response.read()
                    statuses[response.status] += 1
            except aiohttp.ClientError as exc:
                statuses[type(exc).__name__] += 1

        tasks = []
        started = time.perf_counter()
        for index in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, started + index / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(send(index)))
        await asyncio.gather(*tasks)
    return statuses


def flood_process(base: str, rate: float, seconds: float, oversize_every: int) -> collections.Counter:
    return asyncio.run(http_flood(base, rate, seconds, oversize_every))


def test_a_flood_of_bad_http_requests_gets_4xx_and_valid_requests_keep_their_p99(tmp_path):
    with running_worker(tmp_path, "--knob", "max_batch_size=8", "--log-level", "warning") as (process, base, control):
        valid_load(base, 2.0)  # warm-up
        before = valid_load(base, WINDOW)
        # The flood runs in its own process so that it does not hold the measuring client's GIL.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            flooding = pool.apply_async(flood_process, (base, 200, WINDOW, 400))
            during = valid_load(base, WINDOW)
            statuses = flooding.get(timeout=120)
        after = valid_load(base, 2.0)
        with ControlClient(control) as client:
            outcomes = client.next_stats(timeout=5)["stats"]
        assert process.poll() is None
    p99_before, p99_during = before.percentile(99), during.percentile(99)
    print(
        f"\nHTTP flood of {sum(statuses.values())} bad requests (200/s, every 400th 65 MiB): answers {dict(statuses)}; "
        f"valid requests ({CLIENTS} clients): p99 {p99_before * 1000:.1f} ms before, {p99_during * 1000:.1f} ms during "
        f"({p99_during / p99_before:.2f}x), {before.ok / before.elapsed:.0f}/s before, {during.ok / during.elapsed:.0f}/s during"
    )
    assert set(statuses) <= {400, 404, 413} and statuses[413] >= 1
    # The clients' mistakes are counted as theirs, not as the server's failures.
    assert outcomes["rejected"] == sum(statuses.values())
    assert outcomes["failed"] == outcomes["refused"] == 0
    assert sum(before.errors.values()) == sum(during.errors.values()) == sum(after.errors.values()) == 0
    assert p99_during <= 2 * p99_before


def hold_connections(path: Path, count: int) -> tuple[list[socket.socket], collections.Counter]:
    """Opens `count` connections; counts the first message each got (a hello or a nack)."""
    held, first = [], collections.Counter()
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(str(path))
        line = sock.makefile("rb").readline()
        first[json.loads(line)["type"] if line else "closed"] += 1
        held.append(sock)
    return held, first


def closed_after(sock: socket.socket, payload_chunks: list[bytes], pause: float, limit: float) -> tuple[float | None, bytes]:
    """Sends the chunks `pause` apart until the server closes; (seconds until closed or None, last data read)."""
    started = time.monotonic()
    sock.settimeout(0.05)
    received = b""
    for chunk in payload_chunks:
        try:
            sock.sendall(chunk)
        except OSError:
            return time.monotonic() - started, received
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline:
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                return time.monotonic() - started, received
            if not data:
                return time.monotonic() - started, received
            received += data
        if time.monotonic() - started > limit:
            break
    return None, received


def control_flood(path: Path) -> dict:
    """Floods one control socket: connections beyond the cap, oversize and slowloris
    messages, and malformed lines; returns what the server did."""
    figures: dict = {}
    held, first = hold_connections(path, 24)
    figures["24 connections"] = dict(first)
    for sock in held:
        sock.close()
    time.sleep(0.2)
    oversize = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    oversize.connect(str(path))
    seconds, data = closed_after(oversize, [b"x" * 8192] * ((MAX_MESSAGE_BYTES // 8192) + 4), 0.01, 10)
    figures["oversize closed after"] = seconds
    figures["oversize nack"] = b"exceeds the limit" in data
    oversize.close()
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(str(path))
    seconds, data = closed_after(slow, [b'{"v": 1, "type": "pi'] + [b" "] * 30, 0.5, 15)
    figures["slowloris closed after"] = seconds
    slow.close()
    junk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    junk.connect(str(path))
    junk.sendall(
        b"".join(b'{"v": 1, "type": "set", "seq": %d, "knobs": {"max_batch_size": "x"}}\nnot json\n' % i for i in range(2000))
    )
    junk.settimeout(10)
    reader = junk.makefile("rb")
    nacks = 0
    started = time.monotonic()
    while nacks < 4000 and time.monotonic() - started < 30:
        line = reader.readline()
        if not line:
            break
        nacks += json.loads(line)["type"] == "nack"
    figures["malformed lines nacked"] = f"{nacks}/4000 in {time.monotonic() - started:.2f} s"
    junk.close()
    return figures


def test_a_control_socket_flood_stops_neither_serving_nor_tuning(tmp_path):
    with running_supervising_daemon(tmp_path, "--log-level", "warning") as (process, _metrics, worker, admin):
        valid_load(worker, 2.0)
        before = valid_load(worker, WINDOW)
        box: dict = {}
        load = threading.Thread(target=lambda: box.update(during=valid_load(worker, WINDOW)))
        load.start()
        worker_figures = control_flood(tmp_path / "run" / "worker.sock")
        admin_figures = control_flood(admin)
        with ControlClient(admin) as client:
            applied = client.set({"max_queue_delay_us": 500})  # the daemon's own connection still works
            status = worker_entry(client.request("status")["status"])
        load.join(timeout=60)
        assert process.poll() is None
    during = box["during"]
    print(
        f"\ncontrol socket flood: worker socket {worker_figures}; admin socket {admin_figures}; valid requests p99 "
        f"{before.percentile(99) * 1000:.1f} ms before, {during.percentile(99) * 1000:.1f} ms during"
    )
    for figures in (worker_figures, admin_figures):
        assert figures["24 connections"]["nack"] >= 24 - 16 and figures["24 connections"]["hello"] >= 16 - 2
        assert figures["oversize closed after"] is not None and figures["oversize nack"]
        assert figures["slowloris closed after"] is not None and figures["slowloris closed after"] < 5.0 + 2.0
        assert figures["malformed lines nacked"].startswith("4000/4000")
    assert applied == {"max_queue_delay_us": 500}
    assert status["state"] == "ready" and status["restarts"] == 0
    assert sum(during.errors.values()) == 0 and during.ok > 0
