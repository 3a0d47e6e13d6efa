"""The control protocol: every malformed message is a ProtocolError that names the problem."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gputuned.control.protocol import MAX_MESSAGE_BYTES, ProtocolError, decode, encode, message, nack

VALID = [
    message("hello", worker={"pid": 1}, knobs={"streams": {"value": 1}}, restart_only={"device": "cpu"}),
    message("set", seq=1, knobs={"max_batch_size": 8}),
    message("ack", seq=1, applied={"max_batch_size": 8}),
    message("accepted", seq=2, knobs={"max_batch_size": 8, "streams": 2}),
    message("nack", error="nope", seq=1),
    message("nack", error="nope"),
    message("stats", t=1763760000.5, stats={"completed": 3}),
    message("ping", seq=5),
    message("pong", seq=5),
]


@pytest.mark.parametrize("original", VALID, ids=lambda m: m["type"])
def test_valid_messages_round_trip(original):
    line = encode(original)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line.rstrip(b"\n")) == original


@pytest.mark.parametrize(
    ("line", "error", "seq"),
    [
        (b"\xff\xfe", "not valid UTF-8", None),
        (b"{", "not valid JSON", None),
        (b"[1, 2]", "must be a JSON object, got list", None),
        (b'{"v": 2, "type": "ping", "seq": 1}', "unsupported protocol version 2; this side speaks 1", 1),
        (b'{"type": "ping", "seq": 1}', "unsupported protocol version None", 1),
        (b'{"v": 1, "type": "reboot", "seq": 3}', "unknown message type 'reboot'", 3),
        (b'{"v": 1, "type": "set", "seq": 4}', "set: missing field 'knobs'", 4),
        (b'{"v": 1, "type": "set", "seq": "4", "knobs": {}}', "set: field 'seq' must be an integer, got str", None),
        (b'{"v": 1, "type": "set", "seq": 4, "knobs": []}', "set: field 'knobs' must be an object, got list", 4),
        (b'{"v": 1, "type": "set", "seq": 4, "knobs": {}}', "set: 'knobs' is empty", 4),
        (b'{"v": 1, "type": "set", "seq": 4, "knobs": {"streams": 2.5}}', "knob 'streams' must be an integer, got float", 4),
        (b'{"v": 1, "type": "set", "seq": 4, "knobs": {"streams": true}}', "knob 'streams' must be an integer, got bool", 4),
        (b'{"v": 1, "type": "accepted", "seq": 4, "knobs": {"streams": "2"}}', "knob 'streams' must be an integer, got str", 4),
        (b'{"v": 1, "type": "ping", "seq": 4, "extra": 1}', "ping: unknown field 'extra'", 4),
        (b'{"v": 1, "type": "ping", "seq": true}', "field 'seq' must be an integer, got bool", None),
        (b'{"v": 1, "type": "stats", "t": "now", "stats": {}}', "field 't' must be a number, got str", None),
        (b"[" * 100_000 + b"]" * 100_000, "exceeds the limit", None),
        (b"[" * 30_000 + b"]" * 30_000, "nested too deeply", None),
    ],
)
def test_malformed_messages_are_refused_with_the_reason(line, error, seq):
    with pytest.raises(ProtocolError) as caught:
        decode(line)
    assert error in str(caught.value)
    assert caught.value.seq == seq


def test_oversized_message_is_refused_before_parsing():
    line = json.dumps(message("ping", seq=1) | {"pad": "x" * MAX_MESSAGE_BYTES}).encode()
    with pytest.raises(ProtocolError, match=f"exceeds the limit of {MAX_MESSAGE_BYTES} bytes"):
        decode(line)


def test_encode_refuses_invalid_and_oversized_messages():
    with pytest.raises(ProtocolError, match="missing field 'seq'"):
        encode(message("ping"))
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        encode(message("nack", error="x" * MAX_MESSAGE_BYTES))


def test_nack_carries_the_sequence_number_when_known():
    assert nack("bad", 3) == {"v": 1, "type": "nack", "error": "bad", "seq": 3}
    assert nack("bad") == {"v": 1, "type": "nack", "error": "bad"}


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data):
    with contextlib.suppress(ProtocolError):
        decode(data)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(JSON, st.sampled_from([None, *sorted({m["type"] for m in VALID}), "bogus"]))
def test_arbitrary_json_decodes_only_to_valid_messages(value, kind):
    if isinstance(value, dict) and kind is not None:
        value = {**value, "v": 1, "type": kind}
    try:
        decoded = decode(json.dumps(value).encode())
    except ProtocolError:
        return
    assert encode(decoded)  # whatever decodes is a message this side could send itself


def test_a_type_that_is_not_a_string_is_a_protocol_error_not_a_crash():
    # Found by tests/fuzz/fuzz_control.py: an unhashable type raised TypeError.
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode(b'{"v": 1, "type": {"streams": true}, "seq": 3}')
