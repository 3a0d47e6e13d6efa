"""One model served by NVIDIA PyTriton (Triton Inference Server with its dynamic batcher and
Python backend), for bench/peers.py. Runs under the interpreter `scripts/install_triton.sh`
makes (`.triton/python`, Debian's python3.11), with the PyTriton wheel on PYTHONPATH.

    python bench/pytriton_server.py MODEL SHAPE PORT MAX_BATCH QUEUE_DELAY_US INSTANCES

MODEL is a `module:factory` as the gputuned worker takes it; each instance holds its own
copy of the model, runs one batch at a time on one thread (torch.set_num_threads(1), as the
worker's lanes are set for this comparison), and answers on the HTTP port with the v2
protocol: input "input" FP32 [-1, *SHAPE], output "output0".
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from gputuned.inputs import parse_shape
from gputuned.worker.models import LoadedModel, load_model, one_input


def instance(loaded: LoadedModel):
    model = loaded.module

    @batch
    def infer(input: np.ndarray) -> dict[str, np.ndarray]:  # noqa: A002 - the tensor's name on the wire
        torch.set_num_threads(1)
        with torch.inference_mode():
            return {"output0": model(torch.from_numpy(input)).numpy()}

    return infer


def main() -> None:
    spec, shape, port, max_batch, delay_us, instances = sys.argv[1:7]
    dims = parse_shape(shape)
    models = [load_model(spec, torch.device("cpu"), one_input(dims)) for _ in range(int(instances))]  # a copy per instance
    config = TritonConfig(http_port=int(port), grpc_port=int(port) + 1, metrics_port=int(port) + 2, log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="model",
            infer_func=[instance(loaded) for loaded in models],
            inputs=[Tensor(name="input", dtype=np.float32, shape=dims)],
            outputs=[Tensor(name="output0", dtype=np.float32, shape=models[0].outputs[0].shape)],
            config=ModelConfig(max_batch_size=int(max_batch), batcher=DynamicBatcher(max_queue_delay_microseconds=int(delay_us))),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
