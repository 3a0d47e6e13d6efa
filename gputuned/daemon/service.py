"""Composition root of `gputuned run`: builds the parts from the config, schedules the
sampling job, serves /metrics, and stops cleanly on SIGTERM/SIGINT.

Nothing here reads the machine itself; it only wires the rooms together so each room
stays testable on its own.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler

from gputuned.collectors import CollectorContext, build_collectors
from gputuned.collectors.nvml_session import NvmlSession
from gputuned.config import Config
from gputuned.exporter import build_registry, serve_metrics
from gputuned.sampler import Sampler
from gputuned.samples import WorkerTarget
from gputuned.store import SampleStore

log = logging.getLogger(__name__)

SAMPLE_JOB_ID = "sample"


class MonitoringDaemon:
    """Samples the machine on a schedule and serves the result on /metrics.

    The constructor only stores its arguments; `start` does the I/O (first sample, bind,
    scheduler) and `stop` undoes it, so tests and benchmarks can run it in-process.
    """

    def __init__(self, config: Config, nvml: ModuleType, psutil: ModuleType, target: WorkerTarget | None = None) -> None:
        self._config = config
        self._nvml = nvml
        self._psutil = psutil
        self._target = target or WorkerTarget()
        self.store = SampleStore(config.sampling.window_samples)
        self._session: NvmlSession | None = None
        self._sampler: Sampler | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._server: Any = None

    @property
    def metrics_address(self) -> tuple[str, int]:
        """The address /metrics is bound to (the real port when the config said 0)."""
        host, port = self._server.server_address[:2]
        return host, port

    def start(self) -> None:
        config = self._config
        self._session = NvmlSession(self._nvml, Path(config.paths.sys_root))
        enabled = dataclasses.asdict(config.collectors)
        # With both GPU collectors off, nothing may touch NVML (an operator turns them off
        # when NVML misbehaves), so the numa collector then knows no GPUs either.
        uses_nvml = enabled["nvml"] or enabled["pcie"]
        context = CollectorContext(
            proc_root=Path(config.paths.proc_root),
            sys_root=Path(config.paths.sys_root),
            nvml_session=self._session,
            nvml=self._nvml,
            gpu_bus_ids=self._session.bus_ids if uses_nvml else dict,
            psutil=self._psutil,
            clock=time.monotonic,
        )
        self._sampler = Sampler(build_collectors(enabled, context), self.store, lambda: self._target)
        log.info("collectors: %s", ", ".join(self._sampler.collector_names) or "none")
        # One round before serving, so the first scrape already has data.
        self._sampler.tick()

        self._scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self._scheduler.add_listener(self._on_job_event, EVENT_JOB_ERROR | EVENT_JOB_MAX_INSTANCES)
        self._scheduler.add_job(self._sampler.tick, "interval", seconds=config.sampling.interval_seconds, id=SAMPLE_JOB_ID)
        self._scheduler.start()

        host, port = config.metrics.address
        self._server = serve_metrics(build_registry(self.store), host, port)
        log.info("serving metrics on http://%s:%d/metrics", *self.metrics_address)

    def _on_job_event(self, event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_MAX_INSTANCES:
            self.store.count_skipped_round()
        elif event.exception is not None:
            log.error("job %s failed: %s", event.job_id, event.exception)

    def stop(self) -> None:
        """Stops sampling (waiting for a running round), then the server, then releases NVML."""
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._sampler is not None:
            self._sampler.close()
        if self._session is not None:
            self._session.close()


def run_until_signalled(daemon: MonitoringDaemon) -> int:
    """Runs the daemon in the foreground until SIGTERM or SIGINT; returns the exit status."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        daemon.start()
        while not stop.wait(3600):
            pass
    finally:
        daemon.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0
