"""The dynamic batcher: merges queued requests into batches, Triton's way.

A batch is formed when `max_batch_size` items are queued, or when the oldest queued
request has waited `max_queue_delay_us`, whichever comes first; with a delay of 0 a lane
takes whatever is queued at once. Both knobs are read when each batch starts forming, so
a change applies from the next batch. The queue is bounded in items: a request that
would overflow it is refused (the HTTP layer answers 503 with Retry-After).

A request costs an append: the lane forming a batch sleeps on one future that a submit
resolves only when the batch is full (or the first request arrives), and a timer at the
deadline, so a batch of 32 wakes its lane once or twice rather than 32 times.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A request's outcome: its outputs (one array per output the model returns), or why it has none.
Outcome = list[Any] | BaseException


class QueueFull(Exception):
    """The queue holds its maximum number of items, or the worker is draining."""


@dataclass(slots=True)
class PendingRequest:
    """A request waiting for its batch: its input [n, ...], what to call with its outcome
    (once, in the event loop's thread), and when it arrived."""

    tensor: np.ndarray
    reply: Callable[[Outcome], None]
    enqueued: float = field(default_factory=time.perf_counter)
    items: int = field(init=False)  # the tensor's first dimension, read four times a request

    def __post_init__(self) -> None:
        self.items = self.tensor.shape[0]


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
        self._waiter: asyncio.Future[None] | None = None  # the forming lane's, while it sleeps
        self._wake_at_items = 0  # queued items that wake it
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
        waiter = self._waiter
        if waiter is not None and self._queued_items >= self._wake_at_items and not waiter.done():
            waiter.set_result(None)

    async def _sleep_until(self, items: int, deadline: float | None) -> None:
        """Returns once `items` are queued or at `deadline` (on this batcher's clock)."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._wake_at_items = items
        timer = None
        if deadline is not None:
            timer = loop.call_later(max(deadline - self._clock(), 0.0), _resolve, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def next_batch(self) -> list[PendingRequest]:
        """Waits for and returns the next batch (at least one request). One lane forms at a time."""
        async with self._forming:
            while True:
                while not self._queue:
                    await self._sleep_until(1, None)
                max_items = self._max_batch_size()
                deadline = self._queue[0].enqueued + self._max_queue_delay_us() / 1e6
                if self._queued_items < max_items and deadline > self._clock():
                    await self._sleep_until(max_items, deadline)
                if self._queue:  # drain_waiting may have emptied it while the batch filled
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
        """Answers every queued request with `error` (used when the worker must stop at once)."""
        failed = len(self._queue)
        while self._queue:
            self._queue.popleft().reply(error)
        self._queued_items = 0
        return failed


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
