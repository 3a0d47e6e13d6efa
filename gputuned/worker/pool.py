"""The input buffer pool (`pool_mb`): batches are assembled in preallocated blocks.

On CUDA the blocks are pinned host memory, so the host-to-device copy is a DMA that can
overlap compute (`non_blocking=True`); a batch that finds no free block large enough
falls back to a fresh (pinned) allocation and counts as a pool miss. On CPU the blocks
spare an allocation per batch. A resized pool is a new object: blocks still held by a
lane go back to their old pool, which is freed when the last one returns.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

ALIGN = 64  # each input of a batch starts at a multiple of this many bytes of the block
# Each input's (dtype, shape, offset in a block) for one batch shape.
Layout = tuple[tuple[torch.dtype, tuple[int, ...], int], ...]


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's memory as numpy (a bfloat16 one as its raw 16-bit words, which numpy can hold)."""
    return (tensor.view(torch.uint16) if tensor.dtype == torch.bfloat16 else tensor).numpy()


def input_offsets(layout: tuple[tuple[torch.dtype, tuple[int, ...]], ...]) -> tuple[tuple[int, ...], int]:
    """Where each tensor of a batch (dtype, shape) starts in a block, and the bytes they take."""
    offsets, end = [], 0
    for dtype, shape in layout:
        offsets.append(end)
        end += -(-math.prod(shape) * dtype.itemsize // ALIGN) * ALIGN
    return tuple(offsets), end


class Block:
    """A byte buffer lent by a pool, or one batch's own buffer when the pool had none to
    lend, with the views it served batches through."""

    __slots__ = ("_views", "data", "pool")

    def __init__(self, data: torch.Tensor | None, pool: BufferPool | None) -> None:
        self.data = data
        self.pool = pool
        self._views: dict[tuple[torch.dtype, tuple[int, ...], int], tuple[torch.Tensor, np.ndarray]] = {}

    @classmethod
    def for_batch(cls, layout: Layout, pin_memory: bool) -> Block:
        """A block of its own for one batch (the pool had none to lend): each input allocated
        as the batch takes it, its views made once here (a block used once gains nothing
        from carving them out of one buffer, and at batch 1 every request pays for them)."""
        block = cls(None, None)
        for dtype, shape, offset in layout:
            batch = torch.empty(shape, dtype=dtype, pin_memory=pin_memory)
            block._views[(dtype, shape, offset)] = (batch, as_numpy(batch))
        return block

    def view(self, dtype: torch.dtype, shape: tuple[int, ...], offset: int = 0) -> tuple[torch.Tensor, np.ndarray]:
        """The block's bytes from `offset` as a tensor of `dtype` and `shape`, and the same
        memory as a numpy array (a bfloat16 one as its raw 16-bit words). Made once per
        shape and kept: slicing and viewing a tensor three times costs microseconds every batch,
        and a block serves the same few shapes again and again."""
        key = (dtype, shape, offset)
        views = self._views.get(key)
        if views is None:
            assert self.data is not None  # a block of one batch has every view it serves
            nbytes = math.prod(shape) * dtype.itemsize
            batch = self.data[offset : offset + nbytes].view(dtype).view(shape)
            views = self._views[key] = (batch, as_numpy(batch))
        return views

    def release(self) -> None:
        if self.pool is not None:
            self.pool.give_back(self)


class BufferPool:
    """`total_bytes` split into `slots` equal blocks (one per lane, plus one being filled)."""

    def __init__(self, total_bytes: int, slots: int, pin_memory: bool) -> None:
        self.total_bytes = total_bytes
        self.pin_memory = pin_memory
        self.block_bytes = total_bytes // slots if slots > 0 else 0
        self._lock = threading.Lock()
        self._free: list[Block] = []
        if self.block_bytes > 0:
            self._free = [
                Block(torch.empty(self.block_bytes, dtype=torch.uint8, pin_memory=pin_memory), self) for _ in range(slots)
            ]

    def acquire(self, layout: Layout, nbytes: int) -> tuple[Block, bool]:
        """A block for a batch of `layout`, `nbytes` long, and whether it came from the pool (a hit)."""
        if nbytes <= self.block_bytes:
            with self._lock:
                if self._free:
                    return self._free.pop(), True
        return Block.for_batch(layout, self.pin_memory), False

    def give_back(self, block: Block) -> None:
        with self._lock:
            self._free.append(block)
