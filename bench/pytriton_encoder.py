"""The BERT-style encoder (gputuned.worker.encoders) served by NVIDIA PyTriton, for
bench/encoders.py. Runs under the interpreter `scripts/install_triton.sh` makes
(`.triton/python`, which reaches .venv's torch and transformers), with the PyTriton wheel on PYTHONPATH.

    python bench/pytriton_encoder.py PORT MAX_BATCH QUEUE_DELAY_US LENGTH

LENGTH -1: inputs of variable length, as clients send them; Triton's dynamic batcher joins
only requests of one shape, so only requests of equal length share a batch. LENGTH 512:
clients pad every request to the model's maximum, with the attention mask, and every
request can join any batch. One instance, one thread (torch.set_num_threads(1)).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from gputuned.worker.encoders import bert_encoder


def main() -> None:
    port, max_batch, delay_us, length = map(int, sys.argv[1:5])
    model = bert_encoder()
    torch.set_num_threads(1)

    @batch
    def infer(input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> dict[str, np.ndarray]:
        torch.set_num_threads(1)
        with torch.inference_mode():
            hidden, pooled = model(
                torch.from_numpy(input_ids), torch.from_numpy(attention_mask), torch.from_numpy(token_type_ids)
            )
        return {"last_hidden_state": hidden.numpy(), "pooler_output": pooled.numpy()}

    names = ("input_ids", "attention_mask", "token_type_ids")
    config = TritonConfig(http_port=port, grpc_port=port + 1, metrics_port=port + 2, log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="model",
            infer_func=infer,
            inputs=[Tensor(name=name, dtype=np.int64, shape=(length,)) for name in names],
            outputs=[
                Tensor(name="last_hidden_state", dtype=np.float32, shape=(length, 256)),
                Tensor(name="pooler_output", dtype=np.float32, shape=(256,)),
            ],
            config=ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher(max_queue_delay_microseconds=delay_us)),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
