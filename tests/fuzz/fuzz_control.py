"""atheris target: the control protocol decoder answers every line with a message or a ProtocolError.

Run: python tests/fuzz/fuzz_control.py [libFuzzer flags] [CORPUS_DIR ...]
Anything other than a validated message or ProtocolError (a crash) is a finding; the
server would answer a ProtocolError with a nack and keep the connection.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["gputuned"]):
    from gputuned.control.protocol import MAX_MESSAGE_BYTES, ProtocolError, decode, encode, nack


def test_one_input(data: bytes) -> None:
    try:
        message = decode(data)
    except ProtocolError as exc:
        reply = nack(str(exc), exc.seq)
        assert len(encode(reply)) <= MAX_MESSAGE_BYTES
        return
    assert isinstance(message, dict) and isinstance(message["type"], str)
    assert decode(encode(message)) == message  # what was accepted survives a round trip


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
