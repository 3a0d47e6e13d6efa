"""The dynamic batcher: merges queued requests into batches, Triton's way.

A batch is formed when `max_batch_size` items are queued, or when the oldest queued
request has waited `max_queue_delay_us`, whichever comes first; with a delay of 0 a lane
takes whatever is queued at once. Both knobs are read when each batch starts forming, so
a change applies from the next batch. The queue is bounded in items: a request that
would overflow it is refused (the HTTP layer answers 503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


class QueueFull(Exception):
    """The queue holds its maximum number of items, or the worker is draining."""


@dataclass(slots=True)
class PendingRequest:
    """A request waiting for its batch: its input [n, ...], its future, and when it arrived."""

    tensor: torch.Tensor
    future: asyncio.Future[list[torch.Tensor]]
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def items(self) -> int:
        return int(self.tensor.shape[0])


class DynamicBatcher:
    def __init__(
        self,
        max_queue_items: int,
        max_batch_size: Callable[[], int],
        max_queue_delay_us: Callable[[], int],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._max_queue_items = max_queue_items
        self._max_batch_size = max_batch_size
        self._max_queue_delay_us = max_queue_delay_us
        self._clock = clock
        self._queue: collections.deque[PendingRequest] = collections.deque()
        self._queued_items = 0
        self._arrived = asyncio.Event()
        self._forming = asyncio.Lock()
        self._closed = False

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def close(self) -> None:
        """Takes no more requests (draining); what is queued still runs."""
        self._closed = True

    def submit(self, request: PendingRequest) -> None:
        if self._closed:
            raise QueueFull("the worker is draining and takes no new requests")
        if self._queued_items + request.items > self._max_queue_items:
            raise QueueFull(f"queue holds {self._queued_items} of {self._max_queue_items} items")
        self._queue.append(request)
        self._queued_items += request.items
        self._arrived.set()

    async def _wait_for_arrival(self, timeout: float | None) -> bool:
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def next_batch(self) -> list[PendingRequest]:
        """Waits for and returns the next batch (at least one request). One lane forms at a time."""
        async with self._forming:
            while not self._queue:
                await self._wait_for_arrival(None)
            max_items = self._max_batch_size()
            deadline = self._queue[0].enqueued + self._max_queue_delay_us() / 1e6
            while self._queued_items < max_items:
                remaining = deadline - self._clock()
                if remaining <= 0 or not await self._wait_for_arrival(remaining):
                    break
            batch = [self._queue.popleft()]
            items = batch[0].items  # a request larger than the knob still runs, alone
            while self._queue and items + self._queue[0].items <= max_items:
                request = self._queue.popleft()
                batch.append(request)
                items += request.items
            self._queued_items -= items
            return batch

    def drain_waiting(self, error: BaseException) -> int:
        """Fails every queued request with `error` (used when the worker must stop at once)."""
        failed = 0
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(error)
                failed += 1
        self._queued_items = 0
        return failed
