"""A model whose working set grows with the batch beyond what the host can give: a batch of
up to two items reserves a third of the host's memory per item as scratch and is served; a
bigger batch asks for more than a 64-bit process's address space (2^47 bytes per item), so
torch's CPU allocator refuses it ("can't allocate memory", ENOMEM) on any kernel. Served by
the worker as `tests.memory_hungry_model:build` with input shape 4, it makes a real
out-of-memory error on a machine without a GPU.

Why not a third of memory per item for every batch (four items: 4/3 of the host), as it
first was: on this VM (Linux 6.18 with virtio-mem and free-page reporting) such a
reservation was granted now and then, and a four-item request was answered in 3 of 12
test runs; no address space holds 2^49 bytes."""

from __future__ import annotations

import os

import torch
from torch import nn

SERVED_ITEMS = 2
ADDRESS_SPACE_BYTES = 1 << 47  # user space of x86-64 and arm64 with 4-level page tables


class MemoryHungry(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        items = x.shape[0]
        per_item = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 3 if items <= SERVED_ITEMS else ADDRESS_SPACE_BYTES
        scratch = torch.empty(items * per_item, dtype=torch.uint8)  # reserved, never touched
        return self.linear(x) + scratch[:1].float() * 0


def build() -> MemoryHungry:
    torch.manual_seed(0)
    return MemoryHungry()
