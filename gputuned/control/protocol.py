"""The control protocol: versioned JSON objects, one per line (pure, no I/O).

Both sides decode every line through `decode`, which checks size, encoding, JSON, the
version, the message type and each field's presence and type, and raises ProtocolError
with a message naming the problem (and the sequence number when one could be read), so
the receiver can answer with a nack and carry on. Version 1 messages:

    hello  worker -> client  {"worker": {...identity}, "knobs": {name: {value,min,max,live,description}},
                              "restart_only": {setting: current value}}
    set    client -> worker  {"seq": n, "knobs": {name: int}, "worker": name (to the daemon, which worker)}
    accepted client -> worker {"seq": n, "knobs": {name: int}}: these values are now the accepted
                             ones (a kept trial, a hand set), not a trial's; answered with an ack.
                             A worker that keeps a config of its own writes them there (Triton's
                             write-back); the others have nothing to do
    ack    worker -> client  {"seq": n, "applied": {name: int}}
    nack   either            {"error": "...", "seq": n (when known)}
    stats  worker -> client  {"t": monotonic_seconds, "stats": {...cumulative counters and gauges}}
                             (t is CLOCK_MONOTONIC, which is system-wide on Linux: the daemon
                             compares it with its own monotonic clock)
    status client -> either  {"seq": n}; the answer carries {"seq": n, "status": {...}}; a worker's
                             status holds its current "knobs" (the daemon re-reads them after a nack)
    tune   client -> daemon  {"seq": n, "mode": "auto|recommend|frozen", "resume": true, "worker": name};
                             answered with a status
    restart client -> daemon {"seq": n, "worker": name}: start that worker afresh (out of a crash
                             loop, or drained and started again); answered with a status
    ping / pong  either      {"seq": n}
"""

from __future__ import annotations

import json
from typing import Any

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024

_NUMBER = (int, float)
# type -> (required fields, optional fields), each field -> accepted Python types.
_SCHEMAS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "hello": ({"worker": dict, "knobs": dict}, {"restart_only": dict}),
    "set": ({"seq": int, "knobs": dict}, {"worker": str}),
    "accepted": ({"seq": int, "knobs": dict}, {}),
    "ack": ({"seq": int, "applied": dict}, {}),
    "nack": ({"error": str}, {"seq": int}),
    "stats": ({"t": _NUMBER, "stats": dict}, {}),
    "status": ({"seq": int}, {"status": dict}),
    "tune": ({"seq": int}, {"mode": str, "resume": bool, "worker": str}),
    "restart": ({"seq": int}, {"worker": str}),
    "ping": ({"seq": int}, {}),
    "pong": ({"seq": int}, {}),
}
MESSAGE_TYPES = tuple(_SCHEMAS)


class ProtocolError(ValueError):
    """A line that is not a valid message; `seq` is its sequence number when readable."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


def _type_name(types: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", dict: "an object", bool: "a boolean"}
    if isinstance(types, tuple):
        return "a number"
    return names[types]


def _is(value: Any, types: Any) -> bool:
    if types is bool:
        return isinstance(value, bool)
    return isinstance(value, types) and not isinstance(value, bool)


def validate(message: Any) -> dict[str, Any]:
    """Checks a decoded JSON value against the protocol; returns it or raises ProtocolError."""
    if not isinstance(message, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(message).__name__}")
    seq = message.get("seq") if _is(message.get("seq"), int) else None
    version = message.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version!r}; this side speaks {PROTOCOL_VERSION}", seq)
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in _SCHEMAS:
        raise ProtocolError(f"unknown message type {kind!r}; known types: {', '.join(MESSAGE_TYPES)}", seq)
    _check_fields(kind, message, seq)
    if kind == "set":
        if not message["knobs"]:
            raise ProtocolError("set: 'knobs' is empty", seq)
        _check_knob_values("set", "knob", message["knobs"], seq)
    elif kind == "accepted":
        _check_knob_values("accepted", "knob", message["knobs"], seq)
    elif kind == "ack":
        _check_knob_values("ack", "applied knob", message["applied"], seq)
    return message


def _check_fields(kind: str, message: dict[str, Any], seq: int | None) -> None:
    required, optional = _SCHEMAS[kind]
    for name in required:
        if name not in message:
            raise ProtocolError(f"{kind}: missing field {name!r}", seq)
    for name, value in message.items():
        if name in ("v", "type"):
            continue
        types = required.get(name, optional.get(name))
        if types is None:
            raise ProtocolError(f"{kind}: unknown field {name!r}", seq)
        if not _is(value, types):
            raise ProtocolError(f"{kind}: field {name!r} must be {_type_name(types)}, got {type(value).__name__}", seq)


def _check_knob_values(kind: str, what: str, knobs: dict[str, Any], seq: int | None) -> None:
    for name, value in knobs.items():
        if not _is(value, int):
            raise ProtocolError(f"{kind}: {what} {name!r} must be an integer, got {type(value).__name__} {value!r}", seq)


def validate_hello(hello: dict[str, Any]) -> dict[str, Any]:
    """Checks what a hello declares beyond its framing: every knob an object with integer
    `value`, `min` and `max` (min <= value <= max) and a boolean `live`. Raises ProtocolError
    naming the knob and the field, so a worker that speaks the protocol wrongly is reported
    as such rather than taken for a hung one."""
    for name, spec in hello["knobs"].items():
        if not isinstance(spec, dict):
            raise ProtocolError(f"hello: knob {name!r} must be an object, got {type(spec).__name__}")
        for field in ("value", "min", "max"):
            if field not in spec:
                raise ProtocolError(f"hello: knob {name!r} has no {field!r}")
            if not _is(spec[field], int):
                raise ProtocolError(f"hello: knob {name!r}: {field!r} must be an integer, got {spec[field]!r}")
        if not _is(spec.get("live"), bool):
            raise ProtocolError(f"hello: knob {name!r}: 'live' must be a boolean, got {spec.get('live')!r}")
        if not spec["min"] <= spec["value"] <= spec["max"]:
            raise ProtocolError(f"hello: knob {name!r}: value {spec['value']} is outside {spec['min']}..{spec['max']}")
    return hello


def decode(line: bytes) -> dict[str, Any]:
    """One received line (without or with its newline) -> a validated message."""
    if len(line) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(line)} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"message is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"message is not valid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise ProtocolError("message is not valid JSON: nested too deeply") from None
    return validate(value)


def encode(message: dict[str, Any]) -> bytes:
    """A message -> one line of compact JSON ending in a newline; validated like a received one."""
    validate(message)
    line = json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"
    if len(line) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(line)} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes")
    return line


def message(kind: str, **fields: Any) -> dict[str, Any]:
    """Builds a message of this protocol version: message('ping', seq=1)."""
    return {"v": PROTOCOL_VERSION, "type": kind, **fields}


def nack(error: str, seq: int | None = None) -> dict[str, Any]:
    return message("nack", error=error) if seq is None else message("nack", error=error, seq=seq)
