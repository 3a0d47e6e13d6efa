"""Execution lanes (`streams`): that many batches run at once.

Each lane is an asyncio task that takes a batch from the batcher and runs it on a
thread of its own (torch releases the GIL inside its kernels, so CPU lanes overlap),
handed over through a queue and answered with one call into the event loop. A thread
pool would add its futures, its idle-thread semaphore and their chaining into asyncio to
every batch's round trip: at batch 1, a large share of a request's cost. On CUDA each lane also owns a torch.cuda.Stream, so one lane's copy
overlaps another's compute. Adding lanes starts them at once; removing lanes lets the
surplus finish the batch they hold and then exit, so no request is dropped by a change.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gputuned.worker.batcher import DynamicBatcher, PendingRequest
from gputuned.worker.models import LoadedModel
from gputuned.worker.pool import BufferPool, Layout, as_numpy, input_offsets
from gputuned.worker.stats import WorkerStats

log = logging.getLogger(__name__)


class InferenceFailed(Exception):
    """A batch failed; every request in it gets this error (the message says why)."""

    def __init__(self, message: str, out_of_memory: bool = False) -> None:
        super().__init__(message)
        self.out_of_memory = out_of_memory


@dataclass
class LiveSettings:
    """Knob values as the serving path reads them: plain attributes, replaced whole (thread-safe)."""

    max_batch_size: int
    max_queue_delay_us: int
    max_batch_tokens: int  # a variable-length model's: padded tokens per batch
    length_bucket: int  # a variable-length model's: width of a length bucket, in tokens
    streams: int
    pool_mb: int
    intra_op_threads: int
    pool: BufferPool


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    # torch's CPU allocator: "DefaultCPUAllocator: can't allocate memory: you tried to allocate ..."
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


class Lane:
    """One lane's thread (and CUDA stream): runs batches of the model."""

    def __init__(self, index: int, model: LoadedModel, settings: LiveSettings, stats: WorkerStats) -> None:
        self.index = index
        self._model = model
        self._settings = settings
        self._stats = stats
        self._threads: int | None = None  # torch intra-op threads set in this lane's thread
        self._stream = torch.cuda.Stream(model.device) if model.device.type == "cuda" else None
        # Worked out once per model, and per batch shape, not per batch: at batch 1 every
        # request pays for its batch's work.
        self._input_axes = tuple(spec.sequence_axis for spec in model.inputs)
        self._output_axes = tuple(spec.sequence_axis for spec in model.outputs)
        self._layouts: dict[tuple[int, int], tuple[Layout, int]] = {}
        self._batches: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"lane{index}", daemon=True)
        self._thread.start()

    async def run(self, batch: list[PendingRequest]) -> list[list[np.ndarray]]:
        """Runs one batch in this lane's thread; returns each request's outputs."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._batches.put((batch, done, loop))
        return await done

    def _serve(self) -> None:
        """The lane's thread: runs each batch handed to it until `close`, in inference mode
        (entered once: per batch it cost ~1.4 us)."""
        with torch.inference_mode():
            while (job := self._batches.get()) is not None:
                batch, done, loop = job
                try:
                    outputs = self._run(batch)
                except BaseException as exc:  # noqa: BLE001 - whatever failed is the batch's outcome
                    loop.call_soon_threadsafe(_settle, done, None, exc)
                else:
                    loop.call_soon_threadsafe(_settle, done, outputs, None)

    def _run(self, batch: list[PendingRequest]) -> list[list[np.ndarray]]:
        started = time.perf_counter()
        settings = self._settings
        model = self._model
        if model.device.type == "cpu" and self._threads != settings.intra_op_threads:
            # OpenMP's thread count is per calling thread: each lane sets its own, at a batch boundary.
            torch.set_num_threads(settings.intra_op_threads)
            self._threads = settings.intra_op_threads
        items = 0
        length = 0  # the batch's longest request: what a variable-length batch is padded to
        tokens = 0
        for request in batch:
            items += request.items
            tokens += request.items * request.length
            length = max(length, request.length)
        layout, nbytes = self._layout(items, length)
        block, pool_hit = None, False
        h2d_bytes = 0
        oom = False
        try:
            block, pool_hit = settings.pool.acquire(layout, nbytes)
            tensors = []
            for index, (dtype, shape, offset) in enumerate(layout):
                tensor, array = block.view(dtype, shape, offset)
                # The batch's one copy of each request, into memory the lane owns (writable, pinned on CUDA).
                _assemble(array, batch, index, self._input_axes[index], length)
                tensors.append(tensor)
            if self._stream is not None:
                with torch.cuda.stream(self._stream):
                    device_tensors = [t.to(model.device, non_blocking=True) for t in tensors]
                    h2d_bytes = nbytes
                    result = model.module(*device_tensors)
                    outputs = [t.to("cpu", non_blocking=True) for t in _as_tuple(result)]
                self._stream.synchronize()  # the block may be reused and outputs read after this
            else:
                outputs = list(_as_tuple(model.module(*tensors)))
        except Exception as exc:  # one failed batch must not stop the lane
            oom = _is_out_of_memory(exc)
            raise InferenceFailed(
                f"inference failed{' (out of memory)' if oom else ''}: {type(exc).__name__}: {exc}", out_of_memory=oom
            ) from exc
        finally:
            if block is not None:
                block.release()
            self._stats.batch_done(
                items, time.perf_counter() - started, pool_hit, h2d_bytes, oom, tokens, items * length - tokens
            )
        return _split(batch, [as_numpy(t) for t in outputs], self._output_axes)

    def _layout(self, items: int, length: int) -> tuple[Layout, int]:
        """Each input's (dtype, shape, offset in the block) for a batch of `items` padded to
        `length` tokens, and the bytes they take."""
        key = (items, length)
        known = self._layouts.get(key)
        if known is None:
            shapes = tuple((spec.torch_dtype, (items, *spec.at_length(length))) for spec in self._model.inputs)
            offsets, nbytes = input_offsets(shapes)
            if len(self._layouts) >= LAYOUTS_KEPT:
                self._layouts.clear()
            known = self._layouts[key] = (tuple((d, s, o) for (d, s), o in zip(shapes, offsets)), nbytes)
        return known

    def close(self) -> None:
        """Ends the thread once the batch it runs (if any) is done."""
        self._batches.put(None)
        self._thread.join()


LAYOUTS_KEPT = 4096  # batch shapes (items, padded length) whose layout a lane remembers
# A batch handed to a lane's thread: its requests, the future its outcome settles, and that future's loop.
_Job = tuple[list[PendingRequest], "asyncio.Future[list[list[np.ndarray]]]", asyncio.AbstractEventLoop]


def _assemble(array: np.ndarray, batch: list[PendingRequest], index: int, axis: int, length: int) -> None:
    """Input `index` of every request of the batch into `array` [items, ...]. A variable
    input (its sequence on `axis`) is padded to the batch's `length` with zeros; a mask the
    client left out is 1 over each request's own tokens."""
    parts = [request.tensors[index] for request in batch]
    if not axis:
        np.concatenate(parts, out=array)  # type: ignore[arg-type] # a fixed input is always sent
        return
    given = [part for part in parts if part is not None]
    if len(given) == len(parts) and all(request.length == length for request in batch):
        np.concatenate(given, out=array)  # no padding: one copy of each request
        return
    array.fill(0)
    offset = 0
    for request, part in zip(batch, parts):
        where: list[slice] = [slice(offset, offset + request.items)] + [slice(None)] * (array.ndim - 1)
        if axis:
            where[axis] = slice(0, request.length)
        array[tuple(where)] = 1 if part is None else part
        offset += request.items


def _split(batch: list[PendingRequest], arrays: list[np.ndarray], axes: tuple[int, ...]) -> list[list[np.ndarray]]:
    """Each request's rows of every output, and of an output that follows the sequence (on
    its axis in `axes`) only its own tokens (the padding stripped). Split as numpy views,
    once per batch here in the lane's thread: a numpy slice costs a tenth of a tensor slice,
    and the codec writes numpy arrays anyway."""
    per_request: list[list[np.ndarray]] = []
    offset = 0
    if not any(axes):
        for request in batch:
            end = offset + request.items
            per_request.append([a[offset:end] for a in arrays])
            offset = end
        return per_request
    for request in batch:
        end = offset + request.items
        outputs = []
        for array, axis in zip(arrays, axes):
            rows = array[offset:end]
            if axis and rows.shape[axis] != request.length:
                where: list[slice] = [slice(None)] * rows.ndim
                where[axis] = slice(0, request.length)
                rows = rows[tuple(where)]
            outputs.append(rows)
        per_request.append(outputs)
        offset = end
    return per_request


def _settle(done: asyncio.Future[Any], outputs: Any, exc: BaseException | None) -> None:
    """In the event loop: a batch's outcome to its future (gone already if its lane was cancelled)."""
    if done.done():
        return
    if exc is None:
        done.set_result(outputs)
    else:
        done.set_exception(exc)


def _as_tuple(result: Any) -> tuple[torch.Tensor, ...]:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


class LaneSet:
    """Keeps `settings.streams` lanes pulling batches from the batcher."""

    def __init__(self, batcher: DynamicBatcher, model: LoadedModel, settings: LiveSettings, stats: WorkerStats) -> None:
        self._batcher = batcher
        self._model = model
        self._settings = settings
        self._stats = stats
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._target = 0
        self._busy = 0

    @property
    def count(self) -> int:
        return len(self._tasks)

    @property
    def busy(self) -> int:
        """Lanes holding a batch right now (the drain waits for these)."""
        return self._busy

    def resize(self, lanes: int) -> None:
        """Must run in the event loop's thread (call_soon_threadsafe from elsewhere)."""
        self._target = lanes
        for index in range(lanes):
            if index not in self._tasks:
                self._tasks[index] = asyncio.get_running_loop().create_task(self._lane_loop(index), name=f"lane{index}")

    async def _lane_loop(self, index: int) -> None:
        lane = Lane(index, self._model, self._settings, self._stats)
        try:
            while index < self._target:
                batch = await self._batcher.next_batch()
                self._busy += 1
                try:
                    await self._run_batch(lane, batch)
                finally:
                    self._busy -= 1
        finally:
            del self._tasks[index]
            if index < self._target:  # raised again while this lane was leaving
                self._tasks[index] = asyncio.get_running_loop().create_task(self._lane_loop(index), name=f"lane{index}")
            await asyncio.get_running_loop().run_in_executor(None, lane.close)

    async def _run_batch(self, lane: Lane, batch: list[PendingRequest]) -> None:
        try:
            results = await lane.run(batch)
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets an answer, whatever failed
            failure = (
                exc
                if isinstance(exc, InferenceFailed)
                else InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}", out_of_memory=isinstance(exc, MemoryError))
            )
            for request in batch:
                request.reply(failure)
            return
        for request, outputs in zip(batch, results):
            request.reply(outputs)

    async def stop(self) -> None:
        """Ends every lane. Call once the queue is drained and no lane is busy: a lane
        waiting for a batch is cancelled harmlessly, one holding a batch would orphan it."""
        self._target = 0
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
