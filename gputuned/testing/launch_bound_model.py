"""A model whose cost is mostly a fixed wait per batch, as on a GPU where each batch pays a
kernel-launch and transfer latency that hardly grows with its size: 5 ms per call plus a
tiny linear layer. Served as `gputuned.testing.launch_bound_model:build` with input shape 16 (the tests and bench/many_workers.py).

It makes the gain of batching large and clear (at batch 1 a lane serves at most 200
requests/s, at batch 8 about 1,600) while it costs the CPU almost nothing (the wait
sleeps), so on a 2-core test machine two workers and the load generator beside them do
not drown the tuner's signal in CPU contention."""

from __future__ import annotations

import time

import torch
from torch import nn

CALL_SECONDS = 0.005


class LaunchBound(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(CALL_SECONDS)
        return self.linear(x)


def build() -> LaunchBound:
    torch.manual_seed(0)
    return LaunchBound()
