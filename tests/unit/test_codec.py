"""The serving path's speed-ups: the request codec works out a header's checks and the
response's header once and reuses them, with the answers working them out every time gives;
the worker's event loop is uvloop where it is installed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gputuned.worker.codec import HEADER_LENGTH, BadRequest, Codec
from gputuned.worker.models import load_model, one_input

MODEL = load_model("torch.nn:Identity", torch.device("cpu"), one_input((2,)), name="identity")


def binary_request(values: list[list[float]], **extra: object) -> tuple[bytes, str]:
    data = np.asarray(values, dtype=np.float32).tobytes()
    header = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [len(values), 2], "parameters": {"binary_data_size": len(data)}}
        ],
        "outputs": [{"name": "output0", "parameters": {"binary_data": True}}],
        **extra,
    }
    json_part = json.dumps(header).encode()
    return json_part + data, str(len(json_part))


def response_parts(body: bytes, headers: tuple[tuple[str, str], ...]) -> tuple[dict, bytes]:
    """The JSON part and the binary part of a response, split where its HTTP header says."""
    length = dict(headers).get(HEADER_LENGTH)
    if length is None:
        return json.loads(body), b""
    return json.loads(body[: int(length)]), body[int(length) :]


def test_requests_with_one_header_decode_to_their_own_values_through_the_cache():
    codec = Codec(MODEL, 8)
    first_body, length = binary_request([[1.0, 2.0]])
    second_body, same_length = binary_request([[3.0, 4.0]])
    assert length == same_length
    plan, (first,) = codec.decode(first_body, length)
    cached_plan, (second,) = codec.decode(second_body, length)
    assert cached_plan is plan  # the second request's header was not parsed again
    assert first.tolist() == [[1.0, 2.0]] and second.tolist() == [[3.0, 4.0]]
    assert np.shares_memory(second, np.frombuffer(second_body, np.uint8))  # a view of its own body, no copy


def test_the_prepared_response_is_what_encoding_in_full_gives():
    codec = Codec(MODEL, 8)
    body, length = binary_request([[1.0, 2.0], [3.0, 4.0]], id="r7")
    plan, (tensor,) = codec.decode(body, length)
    fast = codec.encode(plan, [tensor])
    header, blob = response_parts(fast.body, fast.headers)
    assert header == {
        "model_name": "identity",
        "model_version": "1",
        "outputs": [{"name": "output0", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}}],
        "id": "r7",
    }
    assert np.frombuffer(blob, dtype=np.float32).tolist() == [1.0, 2.0, 3.0, 4.0]
    # An output of another shape than the model declared is encoded in full, as it is.
    odd = codec.encode(plan, [np.zeros((2, 3), np.float32)])
    header, blob = response_parts(odd.body, odd.headers)
    assert header["outputs"][0]["shape"] == [2, 3] and len(blob) == 24


def test_json_values_in_and_out_are_decoded_and_encoded_every_time():
    codec = Codec(MODEL, 8)
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [5, 6]}]}).encode()
    plan, (tensor,) = codec.decode(body, None)
    assert tensor.tolist() == [[5.0, 6.0]] and plan.response_header is None
    encoded = codec.encode(plan, [tensor])
    assert encoded.headers == () and encoded.content_type == "application/json"
    assert json.loads(encoded.body)["outputs"][0]["data"] == [5.0, 6.0]


def test_a_failing_header_fails_the_same_way_every_time():
    codec = Codec(MODEL, 8)
    body, length = binary_request([[1.0, 2.0]])
    messages = set()
    for _ in range(2):
        with pytest.raises(BadRequest) as failure:
            codec.decode(body[:-4], length)  # four bytes short
        messages.add(str(failure.value))
    assert messages == {"4 bytes of binary data follow the header; input [1, 2] FP32 needs 8"}
    assert codec.decode(body, length)[1][0].tolist() == [[1.0, 2.0]]  # the whole request still decodes


def test_the_cache_keeps_the_newest_headers_only():
    codec = Codec(MODEL, 8, cached_headers=2)
    requests = [binary_request([[1.0, 2.0]], id=str(n)) for n in range(3)]
    plans = [codec.decode(body, length)[0] for body, length in requests]
    assert codec.decode(*requests[2])[0] is plans[2]
    assert codec.decode(*requests[0])[0] is not plans[0]  # evicted, planned anew (and equal)
    assert codec.decode(*requests[0])[0] == plans[0]


def test_the_header_length_names_the_json_part():
    codec = Codec(MODEL, 8)
    with pytest.raises(BadRequest, match=f"{HEADER_LENGTH} 'x' is not an integer"):
        codec.decode(b"{}", "x")


def test_the_worker_runs_on_uvloop_when_installed_and_asyncio_when_asked(monkeypatch):
    import sys

    import uvloop

    from gputuned.worker.service import event_loop_factory

    assert event_loop_factory("auto") is uvloop.new_event_loop
    assert event_loop_factory("uvloop") is uvloop.new_event_loop
    assert event_loop_factory("asyncio") is None
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed
    assert event_loop_factory("auto") is None
    with pytest.raises(ValueError, match="uvloop is not installed"):
        event_loop_factory("uvloop")
