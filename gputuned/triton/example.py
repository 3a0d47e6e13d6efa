"""`gputuned triton-example`: a Triton model repository to try the Triton worker kind on.

It serves the built-in model (resnet-mini) as TorchScript through Triton's Python backend,
with the config as users commonly write it: a max_batch_size, no dynamic batching, one
instance. The model's `execute` runs all the requests Triton hands it as one batch, which
is what lets the dynamic batcher's batches pay.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from gputuned.worker.models import BUILTIN_INPUT_SHAPE, build_builtin_model

MODEL_PY = '''"""Triton Python backend: a TorchScript model; one forward pass per batch of requests."""

import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        # One thread per instance: instances are the parallelism gputuned tunes.
        torch.set_num_threads(1)
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        self.model = torch.jit.load(path).eval()

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy() for request in requests]
        with torch.inference_mode():
            outputs = self.model(torch.from_numpy(np.concatenate(arrays))).numpy()
        responses, start = [], 0
        for array in arrays:
            end = start + array.shape[0]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", outputs[start:end])]))
            start = end
        return responses
'''


def config_text(name: str, max_batch_size: int, outputs: int) -> str:
    dims = ", ".join(str(dim) for dim in BUILTIN_INPUT_SHAPE)
    return (
        f'name: "{name}"\n'
        'backend: "python"\n'
        f"max_batch_size: {max_batch_size}\n"
        f'input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ {dims} ] }} ]\n'
        f'output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ {outputs} ] }} ]\n'
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )


def write_example(repository: Path, name: str, max_batch_size: int) -> Path:
    """Writes `repository/name` (version 1: model.pt and model.py, and config.pbtxt); returns its path."""
    if not 1 <= max_batch_size <= 1024:
        raise ValueError(f"--max-batch-size {max_batch_size} is out of range; allowed 1..1024")
    model = build_builtin_model().eval()
    example = torch.zeros(1, *BUILTIN_INPUT_SHAPE)
    with torch.inference_mode():
        outputs = int(model(example).shape[1])
    traced = torch.jit.trace(model, example)
    directory = repository / name
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "1").mkdir(parents=True)
    traced.save(str(directory / "1" / "model.pt"))
    (directory / "1" / "model.py").write_text(MODEL_PY)
    (directory / "config.pbtxt").write_text(config_text(name, max_batch_size, outputs))
    return directory
