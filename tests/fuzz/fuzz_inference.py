"""atheris target: the inference request decoder answers every body with a tensor or a BadRequest.

Run: python tests/fuzz/fuzz_inference.py [libFuzzer flags] [CORPUS_DIR ...]
The input is the optional Inference-Header-Content-Length value, a newline, then the
body. Anything other than a tensor of the model's input shape or BadRequest (which the
server answers with a 400) is a finding: it would be a 500.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["gputuned"]):
    import torch

    from gputuned.worker.models import load_model
    from gputuned.worker.server import BadRequest, decode_input, requested_outputs, split_body

# A model with a two-value input, so that mutated bodies reach the checks past the shape.
MODEL = load_model("torch.nn:Identity", torch.device("cpu"), (2,), name="identity")
MAX_ITEMS = 64


def test_one_input(data: bytes) -> None:
    header, _, body = data.partition(b"\n")
    header_length = header.decode("latin-1") if header else None
    try:
        document, binary = split_body(body, header_length)
        tensor = decode_input(document, binary, MODEL, MAX_ITEMS)
        requested_outputs(document, MODEL)
    except BadRequest as exc:
        assert str(exc)
        return
    assert tuple(tensor.shape[1:]) == MODEL.input.shape and 1 <= tensor.shape[0] <= MAX_ITEMS


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
