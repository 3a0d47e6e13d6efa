"""Composition root of `gputuned worker`: model, knobs, batcher, lanes, HTTP API, agent.

SIGTERM drains: the worker stops accepting (readiness goes to 503, new requests are
refused with Retry-After), finishes every queued and running request, then exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

from gputuned.knobs import (
    INTEROP_THREADS,
    INTRA_OP_THREADS,
    LENGTH_BUCKET,
    MAX_BATCH_SIZE,
    MAX_BATCH_TOKENS,
    MAX_QUEUE_DELAY_US,
    POOL_MB,
    SCHED_BATCH,
    STREAMS,
    KnobError,
)
from gputuned.worker.agent import Agent
from gputuned.worker.batcher import DynamicBatcher
from gputuned.worker.compiled import describe, out_of_date
from gputuned.worker.httpserver import HttpServer
from gputuned.worker.lanes import LaneSet, LiveSettings
from gputuned.worker.models import LoadedModel
from gputuned.worker.pool import BufferPool
from gputuned.worker.scheduling import set_batch_policy, starting_policy
from gputuned.worker.server import MAX_BODY_BYTES, InferenceApp
from gputuned.worker.stats import WorkerStats

log = logging.getLogger(__name__)

MAX_REQUEST_ITEMS = MAX_BATCH_SIZE.spec(1).maximum  # one request may fill the largest batch the worker offers
# A variable-length model's starting token budget (Text Embeddings Inference's default
# --max-batch-tokens) and buckets (a quarter of the longest sequence wide).
DEFAULT_BATCH_TOKENS = 16384
DEFAULT_BUCKETS = 4


@dataclass(frozen=True)
class WorkerOptions:
    host: str
    port: int
    control_socket: Path | None
    control_group: int | None = None
    max_queue_items: int = 4096
    drain_timeout: float = 30.0
    initial_knobs: dict[str, int] = field(default_factory=dict)  # applied before the worker is ready
    saved_knobs: dict[str, int] = field(default_factory=dict)  # the same, but a refused one is skipped
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None  # event_loop_factory's; None: asyncio's loop


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def available_cpus() -> int:
    return len(os.sched_getaffinity(0))


def pool_limit_mb(device: torch.device) -> int:
    """The largest pool we allow: half the memory that is free now (host, or the GPU's)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return max(int(free / 2 / 2**20), 0)
    return max(int(psutil.virtual_memory().available / 2 / 2**20), 0)


class WorkerService:
    def __init__(self, model: LoadedModel, options: WorkerOptions) -> None:
        self._model = model
        self._options = options
        self._pin = model.device.type == "cuda"
        self.settings = LiveSettings(
            max_batch_size=1,
            max_queue_delay_us=0,
            max_batch_tokens=DEFAULT_BATCH_TOKENS,
            length_bucket=max(model.max_length // DEFAULT_BUCKETS, 1),
            streams=1,
            pool_mb=0,
            intra_op_threads=available_cpus(),
            pool=BufferPool(0, 0, self._pin),
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batcher: DynamicBatcher | None = None
        self._lanes: LaneSet | None = None
        self.stats: WorkerStats | None = None
        self.agent: Agent | None = None
        self.bound_port = 0

    # --- knob appliers: run in the agent's thread, must be thread-safe ------------------
    # Each one changes everything or nothing: what can fail (allocating a pool) happens before
    # any setting is touched, so the agent's all-or-nothing set only has to undo whole appliers.

    def _set_batch_size(self, value: int) -> None:
        self.settings.max_batch_size = value

    def _set_queue_delay(self, value: int) -> None:
        self.settings.max_queue_delay_us = value

    def _set_batch_tokens(self, value: int) -> None:
        self.settings.max_batch_tokens = value

    def _set_length_bucket(self, value: int) -> None:
        self.settings.length_bucket = value

    def _set_streams(self, value: int) -> None:
        pool = BufferPool(self.settings.pool_mb * 2**20, value + 1, self._pin)  # one block per lane, plus one
        self.settings.streams, self.settings.pool = value, pool
        assert self._loop is not None and self._lanes is not None
        self._loop.call_soon_threadsafe(self._lanes.resize, value)

    def _set_pool(self, value: int) -> None:
        # Allocated here, in the agent's thread, so the serving loop never waits for it.
        pool = BufferPool(value * 2**20, self.settings.streams + 1, self._pin)
        self.settings.pool, self.settings.pool_mb = pool, value

    def _set_threads(self, value: int) -> None:
        self.settings.intra_op_threads = value

    def _build_agent(self, socket_path: Path | None) -> Agent:
        model = self._model
        agent = Agent(
            socket_path,
            model=model.name,
            device=str(model.device),
            # The first input at its longest: what the daemon sizes a batch's share of the pool by.
            input_shape=list(model.inputs[0].at_length(model.max_length)),
            input_dtype=model.inputs[0].datatype,
            group=self._options.control_group,
            kind="builtin",
        )
        s = self.settings
        agent.declare(MAX_BATCH_SIZE.spec(s.max_batch_size), self._set_batch_size)
        agent.declare(MAX_QUEUE_DELAY_US.spec(s.max_queue_delay_us), self._set_queue_delay)
        if model.variable:
            agent.declare(MAX_BATCH_TOKENS.spec(s.max_batch_tokens), self._set_batch_tokens)
            agent.declare(LENGTH_BUCKET.spec(s.length_bucket, maximum=model.max_length), self._set_length_bucket)
        agent.declare(STREAMS.spec(s.streams), self._set_streams)
        agent.declare(POOL_MB.spec(s.pool_mb, maximum=pool_limit_mb(model.device)), self._set_pool)
        if model.device.type == "cpu":
            agent.declare(INTRA_OP_THREADS.spec(s.intra_op_threads, maximum=available_cpus()), self._set_threads)
        policy = starting_policy()
        if policy is not None:
            agent.declare(SCHED_BATCH.spec(policy), set_batch_policy)
        agent.restart_only(INTEROP_THREADS.name, torch.get_num_interop_threads())
        assert self.stats is not None
        agent.stats_source(self.stats.snapshot)
        return agent

    async def serve(self, stop: asyncio.Event) -> None:
        """Serves until `stop` is set, then drains."""
        self._loop = asyncio.get_running_loop()
        settings = self.settings
        variable = self._model.variable
        self._batcher = DynamicBatcher(
            self._options.max_queue_items,
            lambda: settings.max_batch_size,
            lambda: settings.max_queue_delay_us,
            max_batch_tokens=(lambda: settings.max_batch_tokens) if variable else None,
            length_bucket=(lambda: settings.length_bucket) if variable else None,
        )
        batcher = self._batcher
        self.stats = WorkerStats(lambda: batcher.queued_items, lambda: self._lanes.count if self._lanes else 0, variable)
        self._lanes = LaneSet(self._batcher, self._model, settings, self.stats)
        app_routes = InferenceApp(self._model, self._batcher, self.stats, MAX_REQUEST_ITEMS)
        http_server = HttpServer(app_routes.handle, MAX_BODY_BYTES, app_routes.refused)
        listener = socket.create_server((self._options.host, self._options.port), family=_family(self._options.host))
        await http_server.start(listener)
        self.bound_port = listener.getsockname()[1]
        self.agent = self._build_agent(self._options.control_socket)
        for name, value in self._options.saved_knobs.items():
            try:
                self.agent.apply({name: value})
            except KnobError as exc:  # saved for another machine or an older worker: its default stays
                log.warning("saved knob skipped: %s", exc)
        if self._options.initial_knobs:
            self.agent.apply(self._options.initial_knobs)  # KnobError: refused before serving anything
        if self._options.control_socket is not None:
            self.agent.start()
        self._lanes.resize(settings.streams)
        app_routes.ready = True
        log.info(
            "serving %s on %s at http://%s:%d/v2 (serving path %s)",
            self._model.name,
            self._model.device,
            self._options.host,
            self.bound_port,
            describe(),
        )
        stale = out_of_date()
        if stale:
            log.warning("%s changed since it was compiled and runs as it was built; rebuild: pip install -e .", ", ".join(stale))
        try:
            await stop.wait()
        finally:
            app_routes.ready = False
            await self._drain()
            # Everything in flight was answered by the drain; the grace period is a backstop.
            await http_server.shutdown(timeout=5.0)
            self.agent.stop()

    async def _drain(self) -> None:
        assert self._batcher is not None and self._lanes is not None
        # A request that was reading its body when the drain began is refused at submit
        # (503) rather than queued behind lanes that are about to stop.
        self._batcher.close()
        deadline = time.monotonic() + self._options.drain_timeout
        while (self._batcher.queued_items or self._lanes.busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._batcher.queued_items:
            failed = self._batcher.drain_waiting(RuntimeError("the worker stopped before this request ran"))
            log.warning("drain timed out; %d queued requests failed", failed)
        await self._lanes.stop()


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The serving path's event loop for --event-loop auto, uvloop or asyncio (None: asyncio's
    own). uvloop (libuv, in C) takes less CPU per request, which counts where one core both
    parses requests and runs the model (bench/serving.py); auto falls back to asyncio where
    uvloop is not installed. Raises ValueError for uvloop asked for and missing."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("--event-loop uvloop: uvloop is not installed (pip install uvloop)") from None
        return None
    return uvloop.new_event_loop


def run_worker(model: LoadedModel, options: WorkerOptions) -> int:
    """Runs the worker in the foreground until SIGTERM/SIGINT, then drains and returns 0."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await WorkerService(model, options).serve(stop)

    with asyncio.Runner(loop_factory=options.loop_factory) as runner:
        runner.run(main())
    log.info("worker stopped")
    return 0
