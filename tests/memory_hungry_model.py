"""A model whose working set grows with the batch beyond what the host has: each item needs
a third of the host's memory as scratch, so torch's CPU allocator really refuses a batch of
four or more ("can't allocate memory": the kernel's overcommit check), while batches of up
to two are served. Served by the worker as `tests.memory_hungry_model:build` with input
shape 4, it makes a real out-of-memory error on a machine without a GPU."""

from __future__ import annotations

import os

import torch
from torch import nn


class MemoryHungry(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scratch_per_item = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 3
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scratch = torch.empty(x.shape[0] * self.scratch_per_item, dtype=torch.uint8)  # reserved, never touched
        return self.linear(x) + scratch[:1].float() * 0


def build() -> MemoryHungry:
    torch.manual_seed(0)
    return MemoryHungry()
