"""A lane's thread: batches handed over through its queue, outcomes back into the event loop."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from gputuned.worker.batcher import PendingRequest
from gputuned.worker.lanes import InferenceFailed, Lane, LiveSettings
from gputuned.worker.models import LoadedModel, TensorSpec
from gputuned.worker.pool import BufferPool
from gputuned.worker.stats import WorkerStats

pytestmark = pytest.mark.integration  # starts threads, processes or servers


class Doubler(torch.nn.Module):
    """Doubles its input, records the thread it ran in and whether in inference mode, and fails on a negative first value
    or waits on `gate` when one is set."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []
        self.inference: list[bool] = []
        self.gate: threading.Event | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.threads.append(threading.current_thread().name)
        self.inference.append(torch.is_inference_mode_enabled())
        if self.gate is not None:
            self.gate.wait(5)
        if x[0, 0] < 0:
            raise RuntimeError("negative input")
        return x * 2


def lane_for(module: Doubler) -> tuple[Lane, WorkerStats]:
    spec = TensorSpec("input", "FP32", (2,))
    model = LoadedModel(
        "doubler", module, (spec,), (TensorSpec("output", "FP32", (2,)),), torch.device("cpu"), "pytorch_libtorch"
    )
    stats = WorkerStats(lambda: 0, lambda: 1)
    settings = LiveSettings(
        max_batch_size=8,
        max_queue_delay_us=0,
        max_batch_tokens=0,
        length_bucket=1,
        streams=1,
        pool_mb=1,
        intra_op_threads=1,
        pool=BufferPool(2**20, 2, False),
    )
    return Lane(0, model, settings, stats), stats


def pending(array: np.ndarray) -> PendingRequest:
    return PendingRequest((array,), 0, lambda _outcome: None)


def request(*values: float) -> PendingRequest:
    return pending(np.array([values], dtype=np.float32))


def test_a_batch_runs_in_the_lanes_own_thread_and_each_request_gets_its_rows():
    module = Doubler()
    lane, stats = lane_for(module)

    async def scenario():
        return await lane.run([request(1, 2), pending(np.array([[3, 4], [5, 6]], dtype=np.float32))])

    try:
        outputs = asyncio.run(scenario())
    finally:
        lane.close()
    assert module.threads == ["lane0"]
    assert [o[0].tolist() for o in outputs] == [[[2, 4]], [[6, 8], [10, 12]]]
    assert stats.batches == 1 and stats.batch_size.snapshot()["sum"] == 3


def test_batches_of_other_sizes_through_one_pooled_block_each_get_their_own_rows():
    """The pool's block keeps a view per batch shape: alternating sizes must not mix them up,
    nor a batch too large for the block (a block of its own) disturb them."""
    module = Doubler()
    lane, stats = lane_for(module)
    lane._settings.pool = BufferPool(64, 1, False)  # one block of 64 bytes: 8 items of 2 FP32
    sizes = [1, 3, 1, 8, 3, 9, 1]

    async def scenario():
        return [await lane.run([pending(np.full((size, 2), size, dtype=np.float32))]) for size in sizes]

    try:
        outputs = asyncio.run(scenario())
    finally:
        lane.close()
    assert [o[0][0].tolist() for o in outputs] == [[[2 * size] * 2] * size for size in sizes]
    assert module.inference == [True] * len(sizes) and not torch.is_inference_mode_enabled()  # in the lane's thread only
    assert (stats.pool_hits, stats.pool_misses) == (6, 1)


def test_a_failing_batch_raises_for_its_requests_and_the_lane_runs_the_next_one():
    lane, stats = lane_for(Doubler())

    async def scenario():
        with pytest.raises(InferenceFailed, match="negative input"):
            await lane.run([request(-1, 0)])
        return await lane.run([request(1, 1)])

    try:
        outputs = asyncio.run(scenario())
    finally:
        lane.close()
    assert outputs[0][0].tolist() == [[2, 2]] and stats.batches == 2


def test_a_batch_whose_waiter_was_cancelled_ends_quietly_and_the_lane_goes_on():
    module = Doubler()
    lane, _ = lane_for(module)
    module.gate = threading.Event()

    errors: list[dict] = []

    async def scenario():
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
        waiting = asyncio.ensure_future(lane.run([request(1, 1)]))
        while not module.threads:  # the batch is in the lane's thread
            await asyncio.sleep(0.01)
        waiting.cancel()
        assert module.gate is not None
        module.gate.set()  # the batch finishes after its waiter is gone
        module.gate = None
        return await asyncio.wait_for(lane.run([request(3, 3)]), 5)

    try:
        outputs = asyncio.run(scenario())
    finally:
        lane.close()
    assert outputs[0][0].tolist() == [[6, 6]]
    assert errors == []  # the late outcome found its future cancelled and was dropped, not set
