"""Composition root of `gputuned run`: builds the parts from the config and wires them.

It builds the collectors, one slot per supervised worker, the sampling and tuning jobs,
/metrics and the admin socket, and talks to systemd; `stop` undoes it in order. It holds
no logic of its own beyond wiring: how a worker is started is `launch.py`'s, supervised
`supervisor.py`'s, tuned `tuning.py`'s, what a worker owns `slot.py`'s, the admin socket
`admin.py`'s, the status report and STATUS= line `status.py`'s.

Threads: sampling runs in a scheduler executor of its own and reads snapshots only, so
neither it nor the watchdog it feeds can be held up by a worker; each worker's tuning job
(which does wait on its worker's acks) runs in another executor.
"""

from __future__ import annotations

import dataclasses
import grp
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from gputuned.collectors import CollectorContext, build_collectors
from gputuned.collectors.nvml_session import NvmlSession, read_pci_numa_node
from gputuned.collectors.tuner import TunerCollector
from gputuned.collectors.worker import WorkerCollector
from gputuned.config import AT_RESTART, ON_RELOAD, Config, ConfigError, load_config
from gputuned.control.server import ServerThread
from gputuned.daemon.admin import AdminServer
from gputuned.daemon.jobs import JobEvents
from gputuned.daemon.placement import host_nodes
from gputuned.daemon.plans import plan_slots
from gputuned.daemon.sdnotify import Notifier, status_due, watchdog_due
from gputuned.daemon.slot import WorkerSlot
from gputuned.daemon.status import build_status, choose_worker, status_line
from gputuned.exporter import build_registry, serve_metrics
from gputuned.knobs import KnobError
from gputuned.page import render as render_page
from gputuned.sampler import Sampler
from gputuned.samples import WorkerTarget
from gputuned.store import SampleStore
from gputuned.tuners.turns import TrialTurns

log = logging.getLogger(__name__)

SAMPLE_JOB_ID = "sample"
SAMPLING_EXECUTOR = "sampling"
STATUS_EVERY_SECONDS = 5.0
PAGE_SPAN_SECONDS, PAGE_STEP_SECONDS = 300.0, 10.0  # the landing page's plot: 5 minutes in 10 s windows


def tune_job_id(slot: WorkerSlot) -> str:
    return f"tune:{slot.name}"


class Daemon:
    """Samples the machine, supervises the workers, serves /metrics and the admin socket.

    The constructor only stores its arguments; `start` does the I/O and `stop` undoes it,
    so tests and benchmarks can run it in-process.
    """

    def __init__(
        self,
        config: Config,
        nvml: ModuleType,
        psutil: ModuleType,
        *,
        supervise: bool = True,
        watch: WorkerTarget | None = None,
        environ: Mapping[str, str] | None = None,
        config_path: Path | None = None,
    ) -> None:
        self._config = config
        self._config_path = config_path
        self._nvml = nvml
        self._psutil = psutil
        self._supervise = supervise
        self._watch = watch or WorkerTarget()
        self.notifier = Notifier(environ if environ is not None else {})
        self.store = SampleStore(config.sampling.window_samples)
        self._job_events = JobEvents(self.store, SAMPLE_JOB_ID)
        self.slots: list[WorkerSlot] = []
        self._session: NvmlSession | None = None
        self._sampler: Sampler | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._server: Any = None
        self._admin: ServerThread | None = None
        self._started_at = time.monotonic()
        self._gpu_count = 0
        self._last_watchdog = 0.0
        self._last_status = 0.0

    # --- wiring -----------------------------------------------------------------------------

    @property
    def metrics_address(self) -> tuple[str, int]:
        """The address /metrics is bound to (the real port when the config said 0)."""
        host, port = self._server.server_address[:2]
        return host, port

    @property
    def admin_socket(self) -> Path:
        return Path(self._config.paths.runtime_dir) / "admin.sock"

    def start(self) -> None:
        config = self._config
        runtime_dir = Path(config.paths.runtime_dir)
        runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        group = self._group()
        self._session = NvmlSession(self._nvml, Path(config.paths.sys_root))
        enabled = dataclasses.asdict(config.collectors)
        # With every GPU collector off, nothing may touch NVML (an operator turns them off
        # when NVML misbehaves), so the numa collector then knows no GPUs either.
        uses_nvml = enabled["nvml"] or enabled["gpm"] or enabled["pcie"]
        context = CollectorContext(
            proc_root=Path(config.paths.proc_root),
            sys_root=Path(config.paths.sys_root),
            kubelet_socket=Path(config.paths.kubelet_socket),
            pod_logs_dir=Path(config.paths.pod_logs_dir),
            nvml_session=self._session,
            nvml=self._nvml,
            gpu_bus_ids=self._session.bus_ids if uses_nvml else dict,
            psutil=self._psutil,
            clock=time.monotonic,
        )
        collectors = build_collectors(enabled, context)
        if self._supervise:
            self.slots = self._build_slots(context)
            collectors += [WorkerCollector(lambda: self.slots), TunerCollector(lambda: self.slots)]
        for slot in self.slots:
            slot.start()
        self._sampler = Sampler(collectors, self.store, self._targets)
        log.info("collectors: %s", ", ".join(self._sampler.collector_names) or "none")
        # One round before serving, so the first scrape already has data.
        self._sampler.tick()

        executors = {"default": ThreadPoolExecutor(max(len(self.slots), 1)), SAMPLING_EXECUTOR: ThreadPoolExecutor(1)}
        self._scheduler = BackgroundScheduler(
            executors=executors, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        self._job_events.attach(self._scheduler)
        self._job_events.register(SAMPLE_JOB_ID)
        self._scheduler.add_job(
            self._sample_round, "interval", seconds=config.sampling.interval_seconds, id=SAMPLE_JOB_ID, executor=SAMPLING_EXECUTOR
        )
        for slot in self.slots:
            self._job_events.register(tune_job_id(slot))
            self._scheduler.add_job(slot.tuning.step, "interval", seconds=config.tuning.interval_seconds, id=tune_job_id(slot))
        self._scheduler.start()

        host, port = config.metrics.address
        self._server = serve_metrics(build_registry(self.store), host, port, self.landing_page)
        log.info("serving metrics on http://%s:%d/metrics", *self.metrics_address)
        self._admin = ServerThread(AdminServer(self.admin_socket, self, group=group), "gputuned-admin")
        self._admin.start()

    def _group(self) -> int | None:
        """The group let onto the admin socket: the first worker's `control_group`."""
        first = self._config.first_worker
        if first is None or not first.control_group:
            return None
        name = first.control_group
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            raise ConfigError(f"worker.control_group: no group named {name!r} on this host") from None

    def _build_slots(self, context: CollectorContext) -> list[WorkerSlot]:
        """One slot per defined worker, placed on its GPU's NUMA node (or its configured CPUs)."""
        config = self._config
        bus_ids = context.gpu_bus_ids()
        self._gpu_count = len(bus_ids)
        gpu_nodes = {gpu: read_pci_numa_node(context.sys_root, bus_id) for gpu, bus_id in bus_ids.items()}
        definitions = config.worker_definitions(self._gpu_count)
        paths = config.paths
        plans = plan_slots(
            definitions, Path(paths.runtime_dir), Path(paths.state_dir), self._gpu_count, gpu_nodes, host_nodes(context.sys_root)
        )
        for plan in plans:
            log.info("placement of worker %s: %s", plan.name, plan.placement_reason)
        turns = TrialTurns()
        return [WorkerSlot(plan, definition, config.tuning, self.store, turns) for plan, definition in zip(plans, definitions)]

    def _targets(self) -> list[WorkerTarget]:
        """The workers the per-process collectors watch."""
        return [slot.target() for slot in self.slots] if self.slots else [self._watch]

    # --- the admin socket's handler (see admin.AdminHandler) ------------------------------------

    def _slot(self, name: str | None) -> WorkerSlot:
        """The named worker, or the only one; KnobError saying which there are."""
        try:
            return self.slots[choose_worker(self.worker_names(), name)]
        except LookupError as exc:
            raise KnobError(f"{exc}; there is nothing to set or tune" if not self.slots else str(exc)) from None

    def worker_names(self) -> list[str]:
        return [slot.name for slot in self.slots]

    def worker_hello(self) -> dict[str, Any] | None:
        return self.slots[0].hello() if len(self.slots) == 1 else None

    def manual_set(self, changes: dict[str, int], worker: str | None = None) -> dict[str, int]:
        return self._slot(worker).manual_set(changes)

    def tune(self, mode: str | None, resume: bool, worker: str | None = None) -> dict[str, Any]:
        self._slot(worker).tune(mode, resume)
        return self.status_report()

    def restart(self, worker: str | None = None) -> dict[str, Any]:
        slot = self._slot(worker)
        log.warning("restarting worker %s on request", slot.name)
        slot.supervisor.restart()
        return self.status_report()

    def status_report(self) -> dict[str, Any]:
        """From snapshots only: answering never waits on a worker."""
        host, port = self.metrics_address
        snapshots = [slot.snapshot() for slot in self.slots]
        return build_status(self.store, snapshots, time.monotonic(), self._started_at, f"http://{host}:{port}/metrics")

    # --- the work loop ----------------------------------------------------------------------

    def _sample_round(self) -> None:
        """The sampling job: sample, then tell systemd we are alive (only if sampling ran).

        The watchdog is fed from here and only here: sampling never waits on a worker, so a
        hung worker (however long its ping timeout) cannot starve it, while a hung sampler
        (NVML stuck in the driver) stops it and systemd restarts the daemon."""
        assert self._sampler is not None
        self._sampler.tick()
        now = time.monotonic()
        if watchdog_due(now, self._last_watchdog, self.notifier.watchdog_interval, self._config.sampling.interval_seconds):
            self.notifier.watchdog()
            self._last_watchdog = now
        if self.notifier.enabled and status_due(now, self._last_status, STATUS_EVERY_SECONDS):
            self.notifier.status(self.status_line())
            self._last_status = now

    def landing_page(self) -> str:
        """The page at `/` of the metrics port: every worker over the last minutes."""
        series = {slot.name: slot.tuning.series(PAGE_SPAN_SECONDS, PAGE_STEP_SECONDS) for slot in self.slots}
        slos = {slot.name: slot.slo_seconds() for slot in self.slots}
        return render_page(self.status_report(), series, slos, PAGE_SPAN_SECONDS, socket.gethostname())

    def status_line(self) -> str:
        return status_line([slot.snapshot() for slot in self.slots])

    def wait_until_ready(self, timeout: float) -> None:
        """Sends READY=1 once the first sample is taken and the workers are ready (or given up on)."""
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            slot.supervisor.wait_ready(max(deadline - time.monotonic(), 0.0))
        self.notifier.ready(self.status_line())

    # --- reload and stop ----------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: re-reads the config; an invalid one is refused whole and the running one kept.

        [tuning] applies whole to each worker's running loop at its next step (SLO, intervals,
        margins, mode), [worker] at the worker's next start, [sampling] and [log] at once; the
        other sections need a restart, which the log says."""
        try:
            new = load_config(self._config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        old = self._config
        logging.getLogger().setLevel(new.log.level.upper())
        if self._scheduler is not None:
            if new.sampling.interval_seconds != old.sampling.interval_seconds:
                self._scheduler.reschedule_job(SAMPLE_JOB_ID, trigger="interval", seconds=new.sampling.interval_seconds)
            if new.tuning.interval_seconds != old.tuning.interval_seconds:
                for slot in self.slots:
                    self._scheduler.reschedule_job(tune_job_id(slot), trigger="interval", seconds=new.tuning.interval_seconds)
        needs_restart = [
            name for name, when in ON_RELOAD.items() if when == AT_RESTART and getattr(new, name) != getattr(old, name)
        ]
        if needs_restart:
            log.warning("reload: changes to [%s] take effect when the daemon restarts", ", ".join(needs_restart))
        definitions = {worker.name: worker for worker in new.worker_definitions(self._gpu_count)}
        if set(definitions) != {slot.name for slot in self.slots}:
            log.warning("reload: adding or removing workers takes effect when the daemon restarts")
        for slot in self.slots:
            if slot.name in definitions:
                slot.reconfigure(definitions[slot.name], new.tuning)
        self._config = new
        log.info("configuration reloaded")

    def stop(self) -> None:
        """Stops tuning, drains the workers, then stops sampling, the servers, and releases NVML."""
        self.notifier.stopping()
        if self._scheduler is not None:
            for slot in self.slots:
                if self._scheduler.get_job(tune_job_id(slot)) is not None:
                    self._scheduler.remove_job(tune_job_id(slot))
        for slot in self.slots:
            # A set in flight completes, then a change on trial is reverted while the connection
            # is open: a server that outlives the daemon (an attached Triton) keeps the accepted knobs.
            slot.tuning.finish("the daemon is stopping")
        for slot in self.slots:
            code = slot.stop()
            log.info("worker %s exited with code %s", slot.name, code)
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        if self._admin is not None:
            self._admin.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._sampler is not None:
            self._sampler.close()
        if self._session is not None:
            self._session.close()


def run_until_signalled(daemon: Daemon) -> int:
    """Runs the daemon in the foreground: SIGTERM/SIGINT stop it, SIGHUP reloads its config."""
    received: list[int] = []
    wake = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        wake.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        daemon.start()
        threading.Thread(target=daemon.wait_until_ready, args=(600.0,), name="gputuned-ready", daemon=True).start()
        stopping = False
        while not stopping:
            wake.wait()
            wake.clear()
            while received:
                signum = received.pop(0)
                if signum == signal.SIGHUP:
                    daemon.reload()
                else:
                    log.info("received %s, stopping", signal.Signals(signum).name)
                    stopping = True
    finally:
        daemon.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0


def daemon_environment() -> dict[str, str]:
    """The systemd variables the notifier reads, taken at the edge."""
    return {key: os.environ[key] for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID") if key in os.environ}
