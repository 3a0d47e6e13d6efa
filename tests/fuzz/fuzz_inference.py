"""atheris target: the inference request decoder answers every body with an array or a BadRequest.

Run: python tests/fuzz/fuzz_inference.py [libFuzzer flags] [CORPUS_DIR ...]
The input is the optional Inference-Header-Content-Length value, a newline, then the
body. Anything other than an array of the model's input shape or BadRequest (which the
server answers with a 400) is a finding: it would be a 500.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["gputuned"]):
    import torch

    from gputuned.worker.codec import BadRequest, Codec
    from gputuned.worker.models import load_model, one_input

# A model with a two-value input, so that mutated bodies reach the checks past the shape.
MODEL = load_model("torch.nn:Identity", torch.device("cpu"), one_input((2,)), name="identity")
MAX_ITEMS = 64
CODEC = Codec(MODEL, MAX_ITEMS)


def test_one_input(data: bytes) -> None:
    """Decoded twice: the second time the header's plan may come from the codec's cache,
    and must give the same answer."""
    header, _, body = data.partition(b"\n")
    header_length = header.decode("latin-1") if header else None
    answers = []
    for _ in range(2):
        try:
            plan, arrays = CODEC.decode(body, header_length)
        except BadRequest as exc:
            assert str(exc)
            answers.append(str(exc))
            continue
        (array,) = arrays
        assert array is not None and tuple(array.shape[1:]) == MODEL.inputs[0].shape and 1 <= array.shape[0] <= MAX_ITEMS
        assert array.shape == plan.inputs[0].shape
        answers.append(array)
    first, second = answers
    assert first == second if isinstance(first, str) else first.tobytes() == second.tobytes()  # NaN-safe


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
