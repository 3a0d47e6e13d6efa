"""Models bench/serving.py defines for itself, served as `serving_models:NAME` (bench/ on PYTHONPATH).

- `encoder`: a small transformer encoder (2 layers, d_model 128, 4 heads) over 32 tokens:
  attention and layer norms instead of convolutions, the other kind of model people serve.
  Input shape 32,128.
- `nearly_free`: one sum over the input; the model costs next to nothing, so what is served
  per second is the serving path's own ceiling. Input shape 16.
"""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=128, nhead=4, dim_feedforward=256, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).mean(dim=1)


class NearlyFree(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1, keepdim=True)


def encoder() -> nn.Module:
    torch.manual_seed(0)
    return Encoder().eval()


def nearly_free() -> nn.Module:
    return NearlyFree()
