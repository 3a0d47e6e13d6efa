"""A BERT-style encoder to serve and to tune against: built by `transformers` with random
weights (nothing downloaded), taking token ids, an attention mask and token types.

    gputuned worker --model gputuned.worker.encoders:bert_encoder

Such a model (embedding and classification models, cross-encoders, rerankers) takes
several INT64 inputs whose length changes from request to request; this one declares
that in its `gputuned_signature`, so the worker pads each batch to its longest request,
builds the attention mask a client leaves out, and returns the per-token output at each
request's own length. Its outputs: the last hidden state per token, and the pooled
[CLS] vector. The same seed gives the same weights in every process, so a test or a
benchmark can compute a request's expected output on its own.

The `[encoders]` extra installs transformers.
"""

from __future__ import annotations

import torch
from torch import nn

MAX_LENGTH = 512
SIGNATURE = {
    "inputs": [
        {"name": "input_ids", "datatype": "INT64", "shape": [-1]},
        {"name": "attention_mask", "datatype": "INT64", "shape": [-1], "mask": True},
        {"name": "token_type_ids", "datatype": "INT64", "shape": [-1]},
    ],
    "max_length": MAX_LENGTH,
    "outputs": ["last_hidden_state", "pooler_output"],
}
VOCABULARY = 8192


class Encoder(nn.Module):
    """transformers' BertModel, called positionally and returning plain tensors."""

    gputuned_signature = SIGNATURE

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state, out.pooler_output


def bert_encoder(hidden: int = 256, layers: int = 4, heads: int = 4, seed: int = 0) -> Encoder:
    """A BERT encoder with `layers` layers of width `hidden`, up to 512 tokens, random weights from `seed`."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCABULARY,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=MAX_LENGTH,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = BertModel(config)
    finally:
        torch.random.set_rng_state(state)
    return Encoder(model).eval()
