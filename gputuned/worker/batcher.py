"""The dynamic batcher: merges queued requests into batches, Triton's way, and for a
variable-length model by length and by tokens.

A batch is formed when `max_batch_size` items are queued, or when the oldest queued
request has waited `max_queue_delay_us`, whichever comes first; with a delay of 0 a lane
takes whatever is queued at once. The knobs are read when each batch starts forming, so a
change applies from the next batch. The queue is bounded in items: a request that would
overflow it is refused (the HTTP layer answers 503 with Retry-After).

A variable-length model's requests wait in length buckets `length_bucket` tokens wide. A
batch is always begun by the oldest request, and takes only requests of its bucket (then
the oldest of those): the lane pads a batch to its longest request, so one bucket bounds
the padding while the oldest-first start keeps every request's wait bounded. A batch also
stays within `max_batch_tokens`, counting its padding (items x its longest length); a
request larger than either limit still runs, alone. Narrow buckets waste little on
padding but fill batches slowly; wide ones fill them at once and pad more: the tuner
weighs the two. A fixed-shape model's requests all share one bucket, and have no tokens.

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
    """A request waiting for its batch: its inputs [n, ...] in the model's order (None: a
    mask the lane builds), its tokens per item (0: fixed shapes), what to call with its
    outcome (once, in the event loop's thread), and when it arrived."""

    tensors: tuple[np.ndarray | None, ...]
    length: int
    reply: Callable[[Outcome], None]
    enqueued: float = field(default_factory=time.perf_counter)
    items: int = field(init=False)  # the first input's first dimension, read four times a request

    def __post_init__(self) -> None:
        first = self.tensors[0]
        self.items = 1 if first is None else first.shape[0]


class DynamicBatcher:
    def __init__(
        self,
        max_queue_items: int,
        max_batch_size: Callable[[], int],
        max_queue_delay_us: Callable[[], int],
        clock: Callable[[], float] = time.perf_counter,
        max_batch_tokens: Callable[[], int] | None = None,
        length_bucket: Callable[[], int] | None = None,
    ) -> None:
        self._max_queue_items = max_queue_items
        self._max_batch_size = max_batch_size
        self._max_queue_delay_us = max_queue_delay_us
        self._max_batch_tokens = max_batch_tokens
        self._length_bucket = length_bucket
        self._clock = clock
        self._width = length_bucket() if length_bucket is not None else 0  # the buckets' width now; 0: one bucket
        self._buckets: dict[int, collections.deque[PendingRequest]] = {}
        self._bucket_items: dict[int, int] = {}
        self._queued_items = 0
        self._waiter: asyncio.Future[None] | None = None  # the forming lane's, while it sleeps
        self._wake_bucket = 0  # the bucket whose filling wakes it
        self._wake_at_items = 0  # that bucket's items that do
        self._forming = asyncio.Lock()
        self._closed = False

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def close(self) -> None:
        """Takes no more requests (draining); what is queued still runs."""
        self._closed = True

    def _bucket(self, length: int) -> int:
        return (length - 1) // self._width if self._width and length else 0

    def submit(self, request: PendingRequest) -> None:
        if self._closed:
            raise QueueFull("the worker is draining and takes no new requests")
        if self._queued_items + request.items > self._max_queue_items:
            raise QueueFull(f"queue holds {self._queued_items} of {self._max_queue_items} items")
        bucket = self._bucket(request.length)
        queue = self._buckets.get(bucket)
        if queue is None:
            queue = self._buckets[bucket] = collections.deque()
            self._bucket_items[bucket] = 0
        queue.append(request)
        self._bucket_items[bucket] += request.items
        self._queued_items += request.items
        waiter = self._waiter
        if (
            waiter is not None
            and not waiter.done()
            and (self._wake_at_items <= 1 or bucket == self._wake_bucket)
            and self._bucket_items[bucket] >= self._wake_at_items
        ):
            waiter.set_result(None)

    async def _sleep_until(self, bucket: int, items: int, deadline: float | None) -> None:
        """Returns once `items` are queued in `bucket` (any bucket for one item) or at
        `deadline` (on this batcher's clock)."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._wake_bucket, self._wake_at_items = bucket, items
        timer = None
        if deadline is not None:
            timer = loop.call_later(max(deadline - self._clock(), 0.0), _resolve, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _rebucket(self) -> None:
        """Sorts the queued requests into buckets of the knob's width, when it changed."""
        width = self._length_bucket() if self._length_bucket is not None else 0
        if width == self._width:
            return
        queued = sorted((r for queue in self._buckets.values() for r in queue), key=lambda r: r.enqueued)
        self._width = width
        self._buckets, self._bucket_items = {}, {}
        for request in queued:
            bucket = self._bucket(request.length)
            self._buckets.setdefault(bucket, collections.deque()).append(request)
            self._bucket_items[bucket] = self._bucket_items.get(bucket, 0) + request.items

    def _oldest_bucket(self) -> int:
        if len(self._buckets) == 1:
            return next(iter(self._buckets))
        return min(self._buckets, key=lambda bucket: self._buckets[bucket][0].enqueued)

    def _bucket_fills(self, bucket: int, max_items: int) -> int:
        """The items queued in `bucket` that make a full batch: `max_items`, or fewer where
        the token budget binds first (at the bucket's widest length)."""
        if self._max_batch_tokens is None or not self._width:
            return max_items
        widest = min((bucket + 1) * self._width, max(r.length for r in self._buckets[bucket]))
        return max(1, min(max_items, self._max_batch_tokens() // max(widest, 1)))

    async def next_batch(self) -> list[PendingRequest]:
        """Waits for and returns the next batch (at least one request). One lane forms at a time."""
        async with self._forming:
            while True:
                while not self._buckets:
                    await self._sleep_until(0, 1, None)
                self._rebucket()
                max_items = self._max_batch_size()
                bucket = self._oldest_bucket()
                queue = self._buckets[bucket]
                deadline = queue[0].enqueued + self._max_queue_delay_us() / 1e6
                fills = self._bucket_fills(bucket, max_items)
                if self._bucket_items[bucket] < fills and deadline > self._clock():
                    await self._sleep_until(bucket, fills, deadline)
                if self._buckets:  # drain_waiting may have emptied it while the batch filled
                    break
            bucket = self._oldest_bucket()
            return self._take(bucket, max_items)

    def _take(self, bucket: int, max_items: int) -> list[PendingRequest]:
        """The batch: the bucket's requests oldest first, within the item cap and the token budget."""
        queue = self._buckets[bucket]
        budget = self._max_batch_tokens() if self._max_batch_tokens is not None else 0
        first = queue.popleft()
        batch = [first]
        items, longest = first.items, first.length  # a request larger than the knobs still runs, alone
        while queue:
            request = queue[0]
            if items + request.items > max_items:
                break
            if budget and (items + request.items) * max(longest, request.length) > budget:
                break
            batch.append(queue.popleft())
            items += request.items
            longest = max(longest, request.length)
        self._queued_items -= items
        if queue:
            self._bucket_items[bucket] -= items
        else:
            del self._buckets[bucket], self._bucket_items[bucket]
        return batch

    def drain_waiting(self, error: BaseException) -> int:
        """Answers every queued request with `error` (used when the worker must stop at once)."""
        failed = 0
        for queue in self._buckets.values():
            failed += len(queue)
            while queue:
                queue.popleft().reply(error)
        self._buckets.clear()
        self._bucket_items.clear()
        self._queued_items = 0
        return failed


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
