"""The dynamic batcher's Triton semantics, driven by real asyncio timing (short delays)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from gputuned.worker.batcher import DynamicBatcher, PendingRequest, QueueFull


class Knobs:
    def __init__(self, max_batch_size=4, max_queue_delay_us=0):
        self.max_batch_size = max_batch_size
        self.max_queue_delay_us = max_queue_delay_us


def make(knobs: Knobs, max_queue_items: int = 100) -> DynamicBatcher:
    return DynamicBatcher(max_queue_items, lambda: knobs.max_batch_size, lambda: knobs.max_queue_delay_us)


class Outcomes:
    """A request's reply: records what it was called with."""

    def __init__(self) -> None:
        self.got: list = []

    def reply(self, outcome) -> None:
        self.got.append(outcome)


def request(items: int = 1) -> PendingRequest:
    return PendingRequest((np.zeros((items, 2), np.float32),), 0, Outcomes().reply)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_with_no_delay_a_lane_takes_what_is_queued_up_to_the_max():
    async def scenario():
        batcher = make(Knobs(max_batch_size=4))
        for _ in range(6):
            batcher.submit(request())
        first = await batcher.next_batch()
        second = await batcher.next_batch()
        return len(first), len(second), batcher.queued_items

    assert run(scenario()) == (4, 2, 0)


def test_a_delay_waits_for_the_batch_to_fill():
    async def scenario():
        batcher = make(Knobs(max_batch_size=3, max_queue_delay_us=500_000))
        batcher.submit(request())

        async def trickle():
            for _ in range(2):
                await asyncio.sleep(0.02)
                batcher.submit(request())

        asyncio.get_running_loop().create_task(trickle())
        started = time.perf_counter()
        batch = await batcher.next_batch()
        return len(batch), time.perf_counter() - started

    size, waited = run(scenario())
    assert size == 3
    assert waited < 0.4  # it left as soon as the batch was full, not at the deadline


def test_a_delay_is_a_bound_a_partial_batch_leaves_at_the_deadline():
    async def scenario():
        batcher = make(Knobs(max_batch_size=8, max_queue_delay_us=50_000))
        batcher.submit(request())
        started = time.perf_counter()
        batch = await batcher.next_batch()
        return len(batch), time.perf_counter() - started

    size, waited = run(scenario())
    assert size == 1
    assert 0.04 <= waited < 0.5


def test_items_not_requests_count_towards_the_max_and_an_oversize_request_runs_alone():
    async def scenario():
        knobs = Knobs(max_batch_size=4)
        batcher = make(knobs)
        for items in (3, 2, 6, 1):
            batcher.submit(request(items))
        sizes = []
        for _ in range(4):
            batch = await batcher.next_batch()
            sizes.append([r.items for r in batch])
        return sizes

    assert run(scenario()) == [[3], [2], [6], [1]]


def test_a_knob_change_applies_from_the_next_batch():
    async def scenario():
        knobs = Knobs(max_batch_size=2)
        batcher = make(knobs)
        for _ in range(10):
            batcher.submit(request())
        first = await batcher.next_batch()
        knobs.max_batch_size = 8
        second = await batcher.next_batch()
        return len(first), len(second)

    assert run(scenario()) == (2, 8)


def test_the_queue_is_bounded_in_items():
    async def scenario():
        batcher = make(Knobs(), max_queue_items=4)
        batcher.submit(request(3))
        with pytest.raises(QueueFull, match="queue holds 3 of 4 items"):
            batcher.submit(request(2))
        batcher.submit(request(1))
        return batcher.queued_items

    assert run(scenario()) == 4


def test_drain_waiting_fails_queued_requests():
    async def scenario():
        batcher = make(Knobs())
        pending = [request() for _ in range(3)]
        for r in pending:
            batcher.submit(r)
        failed = batcher.drain_waiting(RuntimeError("stopping"))
        return failed, [[type(o) for o in r.reply.__self__.got] for r in pending], batcher.queued_items

    assert run(scenario()) == (3, [[RuntimeError]] * 3, 0)  # each answered once


def test_a_closed_batcher_refuses_new_requests_but_keeps_the_queued_ones():
    async def scenario():
        batcher = make(Knobs())
        batcher.submit(request())
        batcher.close()
        with pytest.raises(QueueFull, match="draining"):
            batcher.submit(request())
        return len(await batcher.next_batch())

    assert run(scenario()) == 1


def test_a_batch_whose_queue_was_drained_while_it_formed_waits_for_the_next_requests():
    async def scenario():
        batcher = make(Knobs(max_batch_size=4, max_queue_delay_us=50_000))
        batcher.submit(request())
        forming = asyncio.get_running_loop().create_task(batcher.next_batch())
        await asyncio.sleep(0.01)
        failed = batcher.drain_waiting(RuntimeError("stopping"))
        await asyncio.sleep(0.08)  # past the drained request's deadline
        batcher.submit(request(2))
        batch = await forming
        return failed, [r.items for r in batch]

    assert run(scenario()) == (1, [2])
