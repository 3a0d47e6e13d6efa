"""A real worker process on the CPU with the built-in model, driven over HTTP and its control socket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as triton

from gputuned.control.client import ControlClient
from gputuned.loadgen import LoadPlan, run_load
from gputuned.testing.online import run_load_in_thread
from gputuned.testing.processes import REPO_ROOT, running_worker, stop
from gputuned.worker.models import build_builtin_model

pytestmark = pytest.mark.integration
MODEL = "resnet-mini"


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with running_worker(tmp_path_factory.mktemp("worker")) as running:
        yield running


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # loopback
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def expected_logits(x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return build_builtin_model()(torch.from_numpy(x)).numpy()


def test_json_inference_matches_the_model(worker):
    _, base, _ = worker
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    body = {
        "id": "r1",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, 64, 64], "data": x.reshape(-1).tolist()}],
    }
    status, _, raw = post(f"{base}/v2/models/{MODEL}/infer", json.dumps(body).encode())
    assert status == 200
    reply = json.loads(raw)
    assert reply["id"] == "r1" and reply["model_name"] == MODEL
    (output,) = reply["outputs"]
    assert output["name"] == "logits" and output["shape"] == [2, 10] and output["datatype"] == "FP32"
    np.testing.assert_allclose(np.array(output["data"]).reshape(2, 10), expected_logits(x), rtol=1e-4, atol=1e-5)


def test_tritons_own_client_works_unchanged(worker):
    _, base, _ = worker
    client = triton.InferenceServerClient(base.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.get_model_repository_index() == [{"name": MODEL, "version": "1", "state": "READY"}]
    metadata = client.get_model_metadata(MODEL)
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 64, 64]}]
    assert client.get_model_config(MODEL)["max_batch_size"] == 512
    x = np.random.default_rng(1).random((3, 3, 64, 64), dtype=np.float32)
    for binary in (True, False):
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        result = client.infer(MODEL, [tensor], outputs=[triton.InferRequestedOutput("logits", binary_data=binary)])
        np.testing.assert_allclose(result.as_numpy("logits"), expected_logits(x), rtol=1e-4, atol=1e-5)
    # Without requested outputs, every output comes back.
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    assert client.infer(MODEL, [tensor]).as_numpy("logits").shape == (3, 10)
    client.close()


GOOD_INPUT = {"name": "input", "datatype": "FP32", "shape": [1, 3, 64, 64], "data": [0.0] * (3 * 64 * 64)}
BINARY_HEADER = json.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 64, 64], "parameters": {"binary_data_size": 10}}]}
).encode()


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "error"),
    [
        (f"/v2/models/{MODEL}/infer", b"{not json", None, 400, "request body is not valid JSON"),
        (f"/v2/models/{MODEL}/infer", b"[1]", None, 400, "request body must be a JSON object"),
        ("/v2/models/other/infer", json.dumps({"inputs": [GOOD_INPUT]}).encode(), None, 404, "unknown model 'other'"),
        (f"/v2/models/{MODEL}/versions/2/infer", json.dumps({"inputs": [GOOD_INPUT]}).encode(), None, 404, "has no version '2'"),
        (
            f"/v2/models/{MODEL}/infer",
            json.dumps({"inputs": []}).encode(),
            None,
            400,
            "'inputs' must be a list of tensors: 'input'",
        ),
        (
            f"/v2/models/{MODEL}/infer",
            json.dumps({"inputs": [{**GOOD_INPUT, "name": "image"}]}).encode(),
            None,
            400,
            "unknown input 'image'",
        ),
        (
            f"/v2/models/{MODEL}/infer",
            json.dumps({"inputs": [{**GOOD_INPUT, "shape": [1, 3, 32, 32]}]}).encode(),
            None,
            400,
            "has shape [1, 3, 32, 32]; expected [batch, 3, 64, 64]",
        ),
        (
            f"/v2/models/{MODEL}/infer",
            json.dumps({"inputs": [{**GOOD_INPUT, "datatype": "INT64"}]}).encode(),
            None,
            400,
            "input input must be FP32, got 'INT64'",
        ),
        (
            f"/v2/models/{MODEL}/infer",
            json.dumps({"inputs": [{**GOOD_INPUT, "data": [1.0, 2.0]}]}).encode(),
            None,
            400,
            "2 values for shape [1, 3, 64, 64] (12288 needed)",
        ),
        (
            f"/v2/models/{MODEL}/infer",
            json.dumps({"inputs": [{**GOOD_INPUT, "data": ["a"] * 12288}]}).encode(),
            None,
            400,
            "data is not FP32",
        ),
        (
            f"/v2/models/{MODEL}/infer",
            json.dumps({"inputs": [{**GOOD_INPUT, "shape": [513, 3, 64, 64]}]}).encode(),
            None,
            400,
            "batch dimension 513 is outside 1..512",
        ),
        (
            f"/v2/models/{MODEL}/infer",
            json.dumps({"inputs": [GOOD_INPUT], "outputs": [{"name": "probs"}]}).encode(),
            None,
            400,
            "unknown output 'probs'",
        ),
        (
            f"/v2/models/{MODEL}/infer",
            json.dumps({"inputs": [GOOD_INPUT], "outputs": [{"name": ["logits"]}]}).encode(),
            None,
            400,
            "unknown output ['logits']",
        ),
        (
            f"/v2/models/{MODEL}/infer",
            json.dumps({"inputs": [GOOD_INPUT], "parameters": [1]}).encode(),
            None,
            400,
            "request: 'parameters' must be an object",
        ),
        (
            f"/v2/models/{MODEL}/infer",
            json.dumps({"inputs": [GOOD_INPUT], "outputs": [{"name": "logits", "parameters": 5}]}).encode(),
            None,
            400,
            "output logits: 'parameters' must be an object",
        ),
        (
            f"/v2/models/{MODEL}/infer",
            BINARY_HEADER + b"x" * 10,
            {"Inference-Header-Content-Length": str(len(BINARY_HEADER))},
            400,
            "10 bytes of binary data follow the header; input [1, 3, 64, 64] FP32 needs 49152",
        ),
        (f"/v2/models/{MODEL}/infer", b"{}", {"Inference-Header-Content-Length": "99"}, 400, "is outside the body"),
        (f"/v2/models/{MODEL}/infer", b"x" * (65 * 1024 * 1024), None, 413, "exceeds the limit of 67108864 bytes"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_json_error_and_the_worker_stays_up(worker, path, body, headers, status, error):
    _, base, _ = worker
    got_status, got_headers, raw = post(base + path, body, headers)
    assert got_status == status, raw[:300]
    assert got_headers["Content-Type"].startswith("application/json")
    assert error in json.loads(raw)["error"]
    ok_status, _, _ = post(f"{base}/v2/models/{MODEL}/infer", json.dumps({"inputs": [GOOD_INPUT]}).encode())
    assert ok_status == 200


def test_a_get_on_the_infer_route_is_405_with_a_json_error(worker):
    _, base, _ = worker
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{base}/v2/models/{MODEL}/infer", timeout=10)
    assert caught.value.code == 405 and "error" in json.loads(caught.value.read())


def test_a_full_queue_answers_503_with_retry_after(tmp_path):
    with running_worker(tmp_path, "--max-queue", "2") as (_, base, _):

        async def burst() -> list[tuple[int, str | None]]:
            import aiohttp

            body = json.dumps({"inputs": [{**GOOD_INPUT, "shape": [2, 3, 64, 64], "data": [0.0] * (2 * 3 * 64 * 64)}]})
            async with aiohttp.ClientSession() as session:

                async def one() -> tuple[int, str | None]:
                    async with session.post(f"{base}/v2/models/{MODEL}/infer", data=body) as response:
                        await response.read()
                        return response.status, response.headers.get("Retry-After")

                return await asyncio.gather(*(one() for _ in range(40)))

        results = asyncio.run(burst())
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) >= 1 and statuses.count(200) >= 1
    assert all(retry == "1" for status, retry in results if status == 503)


def test_knob_changes_under_load_fail_no_request(tmp_path):
    with running_worker(tmp_path) as (_, base, control):
        thread, box = run_load_in_thread(LoadPlan(url=base, concurrency=8, requests=600, duration=120))
        changes = [
            {"max_batch_size": 8},
            {"streams": 2},
            {"max_queue_delay_us": 2000},
            {"pool_mb": 16},
            {"intra_op_threads": 1},
            {"sched_batch": 1},
            {"max_batch_size": 32, "streams": 3},
            {"pool_mb": 0},
            {"streams": 1},
            {"sched_batch": 0},
            {"max_batch_size": 2, "max_queue_delay_us": 0, "intra_op_threads": 2},
        ]
        acks = []
        with ControlClient(control) as client:
            for change in changes:
                time.sleep(0.15)
                acks.append(client.set(change))
        thread.join(timeout=120)
        result = box["result"]
        with ControlClient(control) as client:
            stats = client.next_stats(timeout=5)["stats"]
    assert acks == changes
    assert result.sent == 600 and result.ok == 600 and sum(result.errors.values()) == 0
    assert stats["failed"] == 0 and stats["completed"] >= 1
    assert stats["batch_size"]["sum"] == stats["completed"]  # every item ran in exactly one batch


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux's scheduling policies")
def test_sched_batch_moves_every_worker_thread_and_the_lanes_started_after(tmp_path):
    with running_worker(tmp_path) as (process, base, control):
        tasks = Path(f"/proc/{process.pid}/task")

        def policies() -> set[int]:
            return {os.sched_getscheduler(int(task.name)) for task in tasks.iterdir()}

        assert policies() == {os.SCHED_OTHER}
        with ControlClient(control) as client:
            assert client.hello["knobs"]["sched_batch"]["value"] == 0
            threads = len(list(tasks.iterdir()))
            client.set({"sched_batch": 1})
            assert policies() == {os.SCHED_BATCH}
            client.set({"streams": 3})  # two lane threads more, started by the event loop's thread
            deadline = time.monotonic() + 10
            while len(list(tasks.iterdir())) < threads + 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(list(tasks.iterdir())) >= threads + 2 and policies() == {os.SCHED_BATCH}
            served = asyncio.run(run_load(LoadPlan(url=base, concurrency=4, requests=40, duration=60)))
            assert served.ok == 40
            client.set({"sched_batch": 0})
            assert policies() == {os.SCHED_OTHER}


def test_gputuned_set_refuses_out_of_bounds_and_changes_nothing(worker):
    _, _, control = worker
    command = [sys.executable, "-m", "gputuned", "set", "--socket", str(control)]
    refused = subprocess.run(
        [*command, "max_batch_size=4", "streams=99"], capture_output=True, text=True, timeout=30, cwd=REPO_ROOT
    )
    assert refused.returncode == 1
    assert "streams=99 is above its maximum 16" in refused.stderr
    with ControlClient(control) as client:
        assert client.hello["knobs"]["max_batch_size"]["value"] == 1
    applied = subprocess.run([*command, "max_batch_size=4"], capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)
    assert applied.returncode == 0 and applied.stdout.strip() == "applied: max_batch_size=4"
    with ControlClient(control) as client:
        assert client.set({"max_batch_size": 1}) == {"max_batch_size": 1}


def test_the_worker_survives_a_killed_control_connection(worker):
    process, base, control = worker
    client = ControlClient(control)
    client.connect()
    client.send_raw(b'{"v":1,"type":"set","seq":1,')  # half a message, then the peer dies
    client.close()
    status, _, _ = post(f"{base}/v2/models/{MODEL}/infer", json.dumps({"inputs": [GOOD_INPUT]}).encode())
    assert status == 200 and process.poll() is None
    with ControlClient(control) as again:
        assert again.ping() < 1.0


def test_sigterm_drains_and_exits_cleanly(tmp_path):
    with running_worker(tmp_path) as (process, base, _):
        thread, box = run_load_in_thread(LoadPlan(url=base, concurrency=4, requests=100_000, duration=3))
        time.sleep(1.0)
        elapsed = stop(process, signal.SIGTERM)
        thread.join(timeout=30)
    assert process.returncode == 0 and elapsed < 5
    result = box["result"]
    assert result.ok > 0
    # After the drain began, requests are refused (503) or find the port closed; none fails mid-flight (500).
    assert "http_500" not in result.errors
    assert "worker stopped" in (tmp_path / "worker.log").read_text()


def test_a_model_that_cannot_load_is_a_clear_error_at_start(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gputuned", "worker", "--model", str(tmp_path / "missing.pt"), "--input-shape", "4"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    assert f"cannot load TorchScript file {tmp_path / 'missing.pt'}" in result.stderr


def test_cuda_requested_on_a_cpu_machine_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = subprocess.run(
        [sys.executable, "-m", "gputuned", "worker", "--device", "cuda:0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2 and "CUDA is not available" in result.stderr


@pytest.mark.parametrize(
    ("fraction", "error"),
    [("0.5", "--gpu-memory-fraction caps a GPU's memory, and the device is cpu"), ("1.5", "1.5 is out of range")],
)
def test_a_gpu_memory_cap_the_worker_cannot_apply_is_refused(fraction, error):
    result = subprocess.run(
        [sys.executable, "-m", "gputuned", "worker", "--device", "cpu", "--gpu-memory-fraction", fraction],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2 and error in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("knob", "error"),
    [
        ("max_batch_size=0", "--knob refused: max_batch_size=0 is below its minimum 1"),
        ("streams=lots", "streams='lots' is not an integer"),
        ("warp_speed=9", "unknown knob"),
    ],
)
def test_a_knob_out_of_bounds_on_the_command_line_is_refused_before_serving(knob, error):
    result = subprocess.run(
        [sys.executable, "-m", "gputuned", "worker", "--device", "cpu", "--listen", "127.0.0.1:0", "--knob", knob],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2 and error in result.stderr, result.stderr


def test_open_loop_load_keeps_its_rate_and_bounds(worker):
    _, base, _ = worker
    result = asyncio.run(run_load(LoadPlan(url=base, concurrency=None, rate=100.0, requests=10_000, duration=2.0)))
    assert sum(result.errors.values()) == 0
    assert 140 <= result.sent <= 260  # Poisson arrivals at 100/s for 2 s
    assert result.elapsed < 10


def test_the_load_command_prints_json(worker):
    _, base, _ = worker
    completed = subprocess.run(
        [sys.executable, "-m", "gputuned", "load", base, "--concurrency", "4", "--requests", "50", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    assert summary["sent"] == 50 and summary["ok"] == 50 and summary["errors"] == 0
    assert 0 < summary["latency_seconds"]["p50"] <= summary["latency_seconds"]["p99"]


def test_the_load_command_says_when_the_target_is_unreachable():
    completed = subprocess.run(
        [sys.executable, "-m", "gputuned", "load", "http://127.0.0.1:9", "--requests", "5"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert completed.returncode == 2 and "cannot reach http://127.0.0.1:9" in completed.stderr


def test_kserves_own_client_works_unchanged(worker):
    from kserve import InferenceRESTClient, InferInput, InferRequest
    from kserve.inference_client import RESTConfig

    _, base, _ = worker
    x = np.random.default_rng(2).random((2, 3, 64, 64), dtype=np.float32)

    async def scenario() -> list[np.ndarray]:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        try:
            assert await client.is_server_live(base) and await client.is_model_ready(base, MODEL)
            outputs = []
            for binary in (False, True):
                tensor = InferInput(name="input", shape=list(x.shape), datatype="FP32")
                tensor.set_data_from_numpy(x, binary_data=binary)
                response = await client.infer(
                    base, InferRequest(model_name=MODEL, infer_inputs=[tensor], request_id="k"), model_name=MODEL
                )
                outputs.append(response.outputs[0].as_numpy())
            return outputs
        finally:
            await client.close()

    for logits in asyncio.run(scenario()):
        np.testing.assert_allclose(logits, expected_logits(x), rtol=1e-4, atol=1e-5)
