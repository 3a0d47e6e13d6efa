"""Models of several named inputs and variable length: the signature, requests checked
against it, batches by length bucket and token budget, padding that changes no request's
outputs, and the tuners of the token budget and the bucket width."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from gputuned.config import ConfigError, load_config
from gputuned.daemon.launch import builtin_worker_command
from gputuned.performance import Tokens
from gputuned.tuners.base import TunerInput
from gputuned.tuners.tokens import BatchTokensTuner, LengthBucketTuner
from gputuned.worker.batcher import DynamicBatcher, PendingRequest
from gputuned.worker.codec import BadRequest, Codec
from gputuned.worker.encoders import bert_encoder
from gputuned.worker.lanes import Lane, LiveSettings
from gputuned.worker.models import ModelLoadError, Signature, checked_signature, load_model, parse_input
from gputuned.worker.pool import BufferPool
from gputuned.worker.stats import WorkerStats
from tests.helpers import settled_window

CPU = torch.device("cpu")


class MaskedMean(nn.Module):
    """Token ids and a mask in, per-token embeddings and their masked mean out: padding
    changes its outputs wherever the mask is ignored."""

    gputuned_signature: ClassVar[dict] = {
        "inputs": [
            {"name": "input_ids", "datatype": "INT64", "shape": [-1]},
            {"name": "attention_mask", "datatype": "INT64", "shape": [-1], "mask": True},
        ],
        "max_length": 16,
        "outputs": ["tokens", "pooled"],
    }

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 4)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.embed(ids)
        weights = mask.unsqueeze(-1).float()
        return tokens, (tokens * weights).sum(1) / weights.sum(1)


def masked_mean() -> nn.Module:
    torch.manual_seed(0)
    return MaskedMean()


MODEL = load_model(f"{__name__}:masked_mean", CPU)


def test_a_factory_declares_its_signature_and_the_outputs_that_follow_the_length_are_found():
    assert [(s.name, s.datatype, s.shape, s.mask) for s in MODEL.inputs] == [
        ("input_ids", "INT64", (-1,), False),
        ("attention_mask", "INT64", (-1,), True),
    ]
    assert [(s.name, s.shape) for s in MODEL.outputs] == [("tokens", (-1, 4)), ("pooled", (4,))]
    assert MODEL.max_length == 16 and MODEL.variable


def test_an_exported_program_carries_its_names_dtypes_and_longest_length(tmp_path):
    length = torch.export.Dim("length", min=2, max=64)
    batch = torch.export.Dim("batch", max=32)
    ids = torch.ones(2, 8, dtype=torch.int64)
    program = torch.export.export(masked_mean(), (ids, ids), dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}))
    path = tmp_path / "encoder.pt2"
    torch.export.save(program, str(path))
    model = load_model(str(path), CPU)
    assert [(s.name, s.datatype, s.shape, s.mask) for s in model.inputs] == [
        ("ids", "INT64", (-1,), False),
        ("mask", "INT64", (-1,), False),
    ]
    assert model.max_length == 64
    assert [s.shape for s in model.outputs] == [(-1, 4), (4,)]


@pytest.mark.parametrize(
    ("inputs", "longest", "message"),
    [
        (["ids:INT64:-1"], 0, "give the longest"),
        (["ids:INT64:-1,-1"], 8, "several -1 dimensions"),
        (["mask:INT64:4:mask"], 0, "must follow the sequence"),
        (["attention_mask:INT64:-1"], 8, "only the mask varies"),
        (["ids:INT64:-1", "ids:INT64:-1"], 8, "input names repeat"),
    ],
)
def test_a_signature_that_cannot_serve_is_a_clear_error(inputs, longest, message):
    with pytest.raises(ModelLoadError, match=message):
        checked_signature([parse_input(text) for text in inputs], longest, "--input")


def test_an_input_option_says_what_is_wrong():
    with pytest.raises(ValueError, match="NAME:DATATYPE:DIMS"):
        parse_input("ids:INT64")
    with pytest.raises(ValueError, match="datatype 'INT4'"):
        parse_input("ids:INT4:-1")
    with pytest.raises(ValueError, match="or -1 for the sequence"):
        parse_input("ids:INT64:-2")


def body(*tensors: tuple[str, str, list[int], np.ndarray]) -> tuple[bytes, str]:
    blobs = [array.tobytes() for *_, array in tensors]
    header = {
        "inputs": [
            {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(blob)}}
            for (name, datatype, shape, _), blob in zip(tensors, blobs)
        ]
    }
    json_part = json.dumps(header).encode()
    return json_part + b"".join(blobs), str(len(json_part))


def ids(length: int, items: int = 1) -> np.ndarray:
    return np.arange(1, length * items + 1, dtype=np.int64).reshape(items, length) % 100


def test_several_binary_inputs_decode_in_the_models_order_and_a_mask_left_out_is_the_workers():
    codec = Codec(MODEL, 8)
    mask = np.ones((2, 5), np.int64)
    plan, (got_ids, got_mask) = codec.decode(
        *body(("attention_mask", "INT64", [2, 5], mask), ("input_ids", "INT64", [2, 5], ids(5, 2)))
    )
    assert (plan.items, plan.length) == (2, 5)
    assert got_ids.tolist() == ids(5, 2).tolist() and got_mask.tolist() == mask.tolist()
    plan, (got_ids, got_mask) = codec.decode(*body(("input_ids", "INT64", [1, 3], ids(3))))
    assert plan.length == 3 and got_mask is None


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ([("attention_mask", "INT64", [1, 3], np.ones((1, 3), np.int64))], "missing input input_ids"),
        ([("input_ids", "INT32", [1, 3], ids(3).astype(np.int32))], "input_ids must be INT64"),
        ([("input_ids", "INT64", [1, 17], ids(17))], "17 tokens is outside 1..16"),
        (
            [("input_ids", "INT64", [1, 3], ids(3)), ("attention_mask", "INT64", [1, 4], np.ones((1, 4), np.int64))],
            "inputs differ in length: input_ids 3, attention_mask 4",
        ),
        (
            [("input_ids", "INT64", [1, 3], ids(3)), ("attention_mask", "INT64", [2, 3], np.ones((2, 3), np.int64))],
            "inputs differ in batch dimension",
        ),
        ([("input_ids", "INT64", [1, 3], ids(3)), ("input_ids", "INT64", [1, 3], ids(3))], "given twice"),
        ([("token_ids", "INT64", [1, 3], ids(3))], "unknown input 'token_ids'"),
    ],
)
def test_a_bad_request_is_rejected_with_what_and_why(tensors, message):
    with pytest.raises(BadRequest, match=message):
        Codec(MODEL, 8).decode(*body(*tensors))


def test_bf16_travels_as_its_words_and_json_values_come_back_as_numbers():
    model = load_model("torch.nn:Identity", CPU, Signature((parse_input("x:BF16:2"),)))
    codec = Codec(model, 8)
    document = {"inputs": [{"name": "x", "datatype": "BF16", "shape": [1, 2], "data": [1.5, -2.0]}]}
    plan, (words,) = codec.decode(json.dumps(document).encode(), None)
    assert words.dtype == np.uint16 and torch.from_numpy(words).view(torch.bfloat16).tolist() == [[1.5, -2.0]]
    encoded = codec.encode(plan, [words])
    assert json.loads(encoded.body)["outputs"][0]["data"] == [1.5, -2.0]


def pending(length: int, items: int = 1, at: float = 0.0) -> PendingRequest:
    return PendingRequest((ids(length, items), None), length, lambda _outcome: None, at)


def batcher(max_items: int, budget: int, width: int) -> DynamicBatcher:
    return DynamicBatcher(1000, lambda: max_items, lambda: 0, max_batch_tokens=lambda: budget, length_bucket=lambda: width)


def lengths(batch: list[PendingRequest]) -> list[int]:
    return [request.length for request in batch]


def test_a_batch_is_begun_by_the_oldest_request_and_takes_only_its_bucket():
    async def scenario():
        queue = batcher(max_items=8, budget=10_000, width=4)
        for at, length in enumerate([3, 9, 2, 10, 4, 5]):
            queue.submit(pending(length, at=float(at)))
        return [lengths(await queue.next_batch()) for _ in range(3)]

    assert asyncio.run(scenario()) == [[3, 2, 4], [9, 10], [5]]


def test_the_token_budget_counts_the_padding_and_an_oversize_request_runs_alone():
    async def scenario():
        queue = batcher(max_items=8, budget=24, width=16)
        for at, length in enumerate([4, 4, 8, 4, 16, 2]):
            queue.submit(pending(length, at=float(at)))
        return [lengths(await queue.next_batch()) for _ in range(4)]

    # 4+4 then 8: three items padded to 8 = 24; a fourth would be 32. 16 alone (over 24 with any other).
    assert asyncio.run(scenario()) == [[4, 4, 8], [4], [16], [2]]


def test_a_new_bucket_width_sorts_the_queue_again_oldest_first():
    width = [2]

    async def scenario():
        queue = DynamicBatcher(1000, lambda: 8, lambda: 0, max_batch_tokens=lambda: 1000, length_bucket=lambda: width[0])
        for at, length in enumerate([1, 4, 2, 3]):
            queue.submit(pending(length, at=float(at)))
        width[0] = 4
        return [lengths(await queue.next_batch()) for _ in range(1)]

    assert asyncio.run(scenario()) == [[1, 4, 2, 3]]


def test_padding_changes_no_requests_outputs_and_the_padding_is_stripped():
    model = load_model("gputuned.worker.encoders:bert_encoder", CPU)
    stats = WorkerStats(lambda: 0, lambda: 1, variable=True)
    settings = LiveSettings(32, 0, 4096, 512, 1, 1, 2, BufferPool(2**20, 2, False))
    lane = Lane(0, model, settings, stats)
    rng = np.random.default_rng(1)
    requests = []
    for length, items in ((5, 1), (17, 2), (9, 1)):
        tokens = rng.integers(1, 8000, (items, length))
        mask = None if length == 9 else np.ones((items, length), np.int64)
        requests.append(PendingRequest((tokens, mask, np.zeros_like(tokens)), length, lambda _outcome: None))

    async def scenario():
        return await lane.run(requests)

    try:
        outputs = asyncio.run(scenario())
    finally:
        lane.close()
    reference = bert_encoder()
    for request, (hidden, pooled) in zip(requests, outputs):
        tokens = torch.from_numpy(request.tensors[0])
        with torch.inference_mode():
            alone = reference(tokens, torch.ones_like(tokens), torch.zeros_like(tokens))
        assert hidden.shape == (request.items, request.length, 256)
        np.testing.assert_allclose(hidden, alone[0].numpy(), atol=1e-4)
        np.testing.assert_allclose(pooled, alone[1].numpy(), atol=1e-4)
    assert (stats.tokens, stats.padding_tokens) == (5 + 34 + 9, 4 * 17 - 48)


BOUNDS = {"max_batch_size": (1, 512), "max_batch_tokens": (1, 1 << 20), "length_bucket": (1, 512), "streams": (1, 4)}


def token_input(tokens: Tokens, knobs: dict[str, int] | None = None, **window: object) -> TunerInput:
    measured = settled_window(tokens=tokens, **window)
    knobs = {"max_batch_size": 64, "max_batch_tokens": 4096, "length_bucket": 128, "streams": 1, **(knobs or {})}
    return TunerInput(measured, knobs, BOUNDS, 0.5, "cpu", 2, 8 * 512)


def test_the_token_budget_doubles_where_waiting_tokens_fill_it_and_halves_on_a_breach_or_oom():
    full = Tokens(per_second=20_000, per_item=100, batch_tokens=4000, padding_share=0.1)
    tuner = BatchTokensTuner()
    grow = tuner.propose(token_input(full, in_system=100, items_per_request=1.0))
    assert grow is not None and grow.value == 8192 and grow.kind == "explore"
    assert tuner.propose(token_input(full, in_system=20, items_per_request=1.0)) is None  # 2,000 tokens in the worker
    assert tuner.propose(token_input(replace(full, batch_tokens=1000), in_system=100, items_per_request=1.0)) is None
    oom = tuner.propose(token_input(full, oom=2))
    assert oom is not None and oom.value == 2048 and oom.kind == "backoff"
    breach = tuner.propose(token_input(full, p99=0.9, batch_seconds=0.4))
    assert breach is not None and breach.value == 2048


def test_the_bucket_width_halves_over_the_padding_limit_and_doubles_where_batches_come_out_short():
    tuner = LengthBucketTuner()
    padded = Tokens(per_second=20_000, per_item=100, batch_tokens=4000, padding_share=0.3)
    narrow = tuner.propose(token_input(padded))
    assert narrow is not None and narrow.value == 64
    tight = Tokens(per_second=20_000, per_item=100, batch_tokens=400, padding_share=0.02)
    wide = tuner.propose(token_input(tight, mean_batch=4.0, in_system=30, items_per_request=1.0))
    assert wide is not None and wide.value == 256
    assert tuner.propose(token_input(tight, mean_batch=40.0, in_system=30, items_per_request=1.0)) is None
    assert tuner.propose(token_input(padded, p99=0.9)) is None  # a breach is the budget's and the batch's


def test_a_workers_inputs_in_the_config_are_checked_and_passed_to_the_worker(tmp_path):
    path = tmp_path / "gputuned.toml"
    path.write_text(
        '[worker]\nmodel = "encoders:bert"\ninputs = ["input_ids:INT64:-1", "attention_mask:INT64:-1:mask"]\nmax_length = 256\n'
    )
    worker = load_config(path).worker
    assert worker is not None
    command = builtin_worker_command(worker, Path("/run/w.sock"), {})
    assert command[command.index("--input") :][:4] == ["--input", "input_ids:INT64:-1", "--input", "attention_mask:INT64:-1:mask"]
    assert command[command.index("--max-length") + 1] == "256"
    path.write_text('[worker]\ninputs = ["input_ids:INT4:-1"]\n')
    with pytest.raises(ConfigError, match="inputs: input input_ids: datatype 'INT4' is not one of"):
        load_config(path)
    path.write_text('[worker]\ninputs = ["input_ids:INT64:-1"]\ninput_shape = "3,4"\n')
    with pytest.raises(ConfigError, match="either inputs or input_shape"):
        load_config(path)


def test_bytes_after_a_json_only_request_are_refused_with_the_reason():
    document = {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [5, 6]}]}
    json_part = json.dumps(document).encode()
    with pytest.raises(BadRequest, match="carry their values in the JSON"):
        Codec(MODEL, 8).decode(json_part + b"xx", str(len(json_part)))


def test_an_input_named_by_something_other_than_a_string_is_a_bad_request():
    document = {"inputs": [{"name": [1, 2], "datatype": "INT64", "shape": [1, 2], "data": [5, 6]}]}
    with pytest.raises(BadRequest, match=r"unknown input \[1, 2\]"):
        Codec(MODEL, 8).decode(json.dumps(document).encode(), None)
