"""A real worker serving a BERT-style encoder (random weights, several INT64 inputs, lengths
8-512): mixed lengths batched together give each request what the model gives it alone,
bad requests are rejected with what and why, and knobs set live under load fail nothing."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from gputuned.control.client import ControlClient, ControlError
from gputuned.lengths import Lengths
from gputuned.loadgen import LoadPlan
from gputuned.testing.online import run_load_in_thread
from gputuned.testing.processes import (
    http_get,
    running_prometheus,
    running_supervising_daemon,
    running_worker,
    wait_for,
    worker_status,
)
from gputuned.worker.encoders import bert_encoder
from tests.dashboard_queries import load_dashboards, queries, returns_series, substitute, variable_length

pytestmark = pytest.mark.integration

MODEL = "bert_encoder"
LENGTHS = (8, 13, 40, 64, 100, 257, 512, 9, 31, 200, 8, 77)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("encoder")
    args = (
        "--model",
        "gputuned.worker.encoders:bert_encoder",
        "--knob",
        "max_batch_size=16",
        "--knob",
        "max_queue_delay_us=20000",
    )
    with running_worker(tmp_path, *args) as (_, base, control):
        yield base, control


def parse_metrics(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def infer_body(tokens: np.ndarray, with_mask: bool) -> tuple[bytes, dict[str, str]]:
    items, length = tokens.shape
    tensors = [("input_ids", tokens), ("token_type_ids", np.zeros_like(tokens))]
    if with_mask:
        tensors.append(("attention_mask", np.ones_like(tokens)))
    blobs = [array.astype(np.int64).tobytes() for _, array in tensors]
    header = json.dumps(
        {
            "inputs": [
                {"name": name, "datatype": "INT64", "shape": [items, length], "parameters": {"binary_data_size": len(blob)}}
                for (name, _), blob in zip(tensors, blobs)
            ],
            "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in ("last_hidden_state", "pooler_output")],
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return header + b"".join(blobs), headers


def outputs_of(body: bytes, header_length: int) -> dict[str, np.ndarray]:
    header = json.loads(body[:header_length])
    offset, arrays = header_length, {}
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        arrays[output["name"]] = np.frombuffer(body[offset : offset + size], np.float32).reshape(output["shape"])
        offset += size
    return arrays


def test_mixed_lengths_batched_together_give_what_each_request_gives_alone(encoder):
    base, control = encoder
    rng = np.random.default_rng(7)
    requests = [rng.integers(1, 8000, (1 + index % 2, length)) for index, length in enumerate(LENGTHS)]

    async def send_all() -> list[dict[str, np.ndarray]]:
        async with aiohttp.ClientSession() as session:

            async def one(index: int, tokens: np.ndarray) -> dict[str, np.ndarray]:
                body, headers = infer_body(tokens, with_mask=index % 3 == 0)
                async with session.post(f"{base}/v2/models/{MODEL}/infer", data=body, headers=headers) as response:
                    assert response.status == 200, await response.text()
                    return outputs_of(await response.read(), int(response.headers["Inference-Header-Content-Length"]))

            return await asyncio.gather(*(one(index, tokens) for index, tokens in enumerate(requests)))

    answers = asyncio.run(send_all())
    with ControlClient(control) as client:
        stats = client.next_stats(timeout=5)["stats"]
    # Batched together: fewer batches than requests, and padding computed.
    assert stats["batches"] < len(requests) and stats["padding_tokens"] > 0
    reference = bert_encoder()
    for tokens, answer in zip(requests, answers):
        ids = torch.from_numpy(tokens)
        with torch.inference_mode():
            hidden, pooled = reference(ids, torch.ones_like(ids), torch.zeros_like(ids))
        assert answer["last_hidden_state"].shape == (*tokens.shape, 256)  # the padding stripped
        np.testing.assert_allclose(answer["last_hidden_state"], hidden.numpy(), atol=2e-4)
        np.testing.assert_allclose(answer["pooler_output"], pooled.numpy(), atol=2e-4)


@pytest.mark.parametrize(
    ("inputs", "error"),
    [
        ([("input_ids", "INT64", [1, 4])], "missing input token_type_ids"),
        ([("input_ids", "FP32", [1, 4]), ("token_type_ids", "INT64", [1, 4])], "input_ids must be INT64"),
        ([("input_ids", "INT64", [1, 600]), ("token_type_ids", "INT64", [1, 600])], "600 tokens is outside 1..512"),
        ([("input_ids", "INT64", [1, 4]), ("token_type_ids", "INT64", [1, 5])], "inputs differ in length"),
    ],
)
def test_a_bad_request_is_rejected_with_what_and_why_and_counted(encoder, inputs, error):
    base, control = encoder
    document = {
        "inputs": [
            {"name": name, "datatype": datatype, "shape": shape, "data": [1] * shape[1]} for name, datatype, shape in inputs
        ]
    }
    with ControlClient(control) as client:
        before = client.next_stats(timeout=5)["stats"]["rejected"]

    async def send() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as session, session.post(f"{base}/v2/models/{MODEL}/infer", json=document) as response:
            return response.status, await response.json()

    status, answer = asyncio.run(send())
    assert status == 400 and error in answer["error"]
    with ControlClient(control) as client:
        deadline = time.monotonic() + 5
        while (rejected := client.next_stats(timeout=5)["stats"]["rejected"]) == before and time.monotonic() < deadline:
            pass
    assert rejected == before + 1


def test_knobs_set_live_under_load_fail_no_request(encoder):
    base, control = encoder
    plan = LoadPlan(url=base, concurrency=8, requests=400, duration=60, lengths=Lengths(low=8, high=512))
    thread, box = run_load_in_thread(plan)
    changes = [
        {"length_bucket": 32},
        {"max_batch_tokens": 1024},
        {"max_batch_size": 4, "length_bucket": 512},
        {"max_batch_tokens": 64},  # under the longest request: each runs alone
        {"streams": 2, "max_batch_tokens": 16384, "length_bucket": 8},
        {"max_batch_size": 32, "streams": 1, "length_bucket": 128},
    ]
    acks = []
    with ControlClient(control) as client:
        for change in changes:
            time.sleep(0.5)
            acks.append(client.set(change))
        with pytest.raises(ControlError, match="length_bucket=513 is above its maximum 512"):
            client.set({"length_bucket": 513})
    thread.join(timeout=90)
    result = box["result"]
    with ControlClient(control) as client:
        stats = client.next_stats(timeout=5)["stats"]
    assert acks == changes
    assert result.sent == 400 and result.ok == 400 and sum(result.errors.values()) == 0
    assert stats["failed"] == 0 and stats["tokens"] >= sum(result.tokens)


def test_the_daemon_exports_tokens_and_padding_and_its_dashboards_show_them(tmp_path):
    with running_supervising_daemon(
        tmp_path, model="gputuned.worker.encoders:bert_encoder", device="cpu", ping_timeout_seconds=10.0
    ) as (_, metrics, worker, admin):
        with ControlClient(admin) as client:
            client.set({"max_batch_size": 8, "max_queue_delay_us": 20000})
        target = metrics.removeprefix("http://").removesuffix("/metrics")
        plan = LoadPlan(url=worker, concurrency=8, requests=10**6, duration=20, lengths=Lengths(low=8, high=256))
        with running_prometheus([target], tmp_path) as prometheus:
            load, box = run_load_in_thread(plan)
            panels = [
                (where, substitute(expr, target))
                for dashboard in load_dashboards().values()
                for where, expr in queries(dashboard)
                if variable_length(expr)
            ]
            assert panels

            def empty() -> list[str]:
                return [f"{where}: {expr}" for where, expr in panels if not returns_series(prometheus, expr)]

            wait_for(lambda: not empty(), 30, "every variable-length panel to show data")
            load.join(timeout=60)
        result = box["result"]
        status = wait_for(lambda: (worker_status(admin)["performance"] or {}).get("tokens"), 20, "a window with tokens")

        def counted() -> float | None:  # the worker streams its stats every second
            families = parse_metrics(http_get(metrics))
            tokens = families["gputuned_worker_tokens"].samples[0].value
            return families["gputuned_worker_padding_tokens"].samples[0].value if tokens >= sum(result.tokens) else None

        padding = wait_for(counted, 10, "every token the load sent counted")
        ratio = parse_metrics(http_get(metrics))["gputuned_tuner_padding_ratio"].samples[0].value
        knobs = worker_status(admin)["knobs"]
    assert result.ok > 0 and sum(result.errors.values()) == 0
    assert padding > 0
    assert 0 < status["padding_share"] < 1 and status["per_second"] > 0 and 0 < ratio < 1
    assert {"max_batch_tokens", "length_bucket"} <= set(knobs)
