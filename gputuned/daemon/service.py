"""Composition root of `gputuned run`: builds the parts from the config, schedules the
sampling job, supervises the worker, serves /metrics and the admin socket, talks to
systemd, and stops cleanly.

Nothing here reads the machine itself; it only wires the rooms together so each room
stays testable on its own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler

from gputuned.collectors import CollectorContext, build_collectors
from gputuned.collectors.nvml_session import NvmlSession, read_pci_numa_node
from gputuned.collectors.tuner import TunerCollector
from gputuned.collectors.worker import WorkerCollector
from gputuned.config import Config, ConfigError, load_config, parse_listen_address
from gputuned.control.server import ControlServer, ServerThread
from gputuned.daemon.admin import AdminHandler
from gputuned.daemon.placement import choose_placement
from gputuned.daemon.sdnotify import Notifier
from gputuned.daemon.state import KnobStore, workload_key
from gputuned.daemon.status import PERFORMANCE_WINDOW_SECONDS, build_status
from gputuned.daemon.supervisor import RestartPolicy, Supervisor, WorkerLaunch, WorkerState
from gputuned.exporter import build_registry, serve_metrics
from gputuned.knobs import KnobError, KnobSpec
from gputuned.performance import Measurement, measure
from gputuned.sampler import Sampler
from gputuned.samples import WorkerTarget
from gputuned.store import SampleStore
from gputuned.tuners import default_tuners
from gputuned.tuners.guard import Context, Decision, Guard, GuardSettings, Mode

log = logging.getLogger(__name__)

SAMPLE_JOB_ID = "sample"
TUNE_JOB_ID = "tune"
STATUS_EVERY_SECONDS = 5.0
# Bytes per item of each Open Inference Protocol datatype (sizes the buffer pool).
ITEM_BYTES = {"FP32": 4, "FP16": 2, "FP64": 8, "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8, "UINT8": 1, "BOOL": 1}


def worker_gpu(device: str, gpu_count: int) -> int | None:
    """The NVML index of the worker's GPU: cuda:N -> N; auto -> 0 when there are GPUs."""
    if device == "cpu":
        return None
    if device.startswith("cuda"):
        _, _, index = device.partition(":")
        return int(index) if index.isdigit() else 0
    return 0 if gpu_count else None


def builtin_worker_command(config: Config, control_socket: Path, knobs: Mapping[str, int]) -> list[str]:
    worker = config.worker
    command = [
        sys.executable,
        "-m",
        "gputuned",
        "worker",
        "--listen",
        worker.listen,
        "--control-socket",
        str(control_socket),
        "--model",
        worker.model,
        "--input-dtype",
        worker.input_dtype,
    ]
    if worker.device != "auto":
        command += ["--device", worker.device]
    if worker.input_shape:
        command += ["--input-shape", worker.input_shape]
    if worker.control_group:
        command += ["--control-group", worker.control_group]
    for name, value in sorted(knobs.items()):
        command += ["--saved-knob", f"{name}={value}"]
    return command


def ready_url(listen: str) -> str:
    host, port = parse_listen_address(listen)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v2/health/ready"


class Daemon:
    """Samples the machine, supervises the worker, serves /metrics and the admin socket.

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
        self._session: NvmlSession | None = None
        self._sampler: Sampler | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._server: Any = None
        self._admin: ServerThread | None = None
        self.supervisor: Supervisor | None = None
        self.guard: Guard | None = None
        self._tuned_pid: int | None = None
        self._decision_log_error: str | None = None
        self._knob_store = KnobStore(Path(config.paths.state_dir))
        self._worker_gpu: int | None = None
        self._started_at = time.time()
        self._last_watchdog = 0.0
        self._last_status = 0.0
        self._ready_sent = False

    # --- wiring -----------------------------------------------------------------------------

    @property
    def metrics_address(self) -> tuple[str, int]:
        """The address /metrics is bound to (the real port when the config said 0)."""
        host, port = self._server.server_address[:2]
        return host, port

    @property
    def admin_socket(self) -> Path:
        return Path(self._config.paths.runtime_dir) / "admin.sock"

    @property
    def worker_socket(self) -> Path:
        return Path(self._config.paths.runtime_dir) / "worker.sock"

    def _target(self) -> WorkerTarget:
        if self.supervisor is None:
            return self._watch
        return WorkerTarget(pid=self.supervisor.status().pid, gpu=self._worker_gpu)

    def start(self) -> None:
        config = self._config
        runtime_dir = Path(config.paths.runtime_dir)
        runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
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
        collectors = build_collectors(enabled, context)
        if self._supervise:
            self.supervisor = self._build_supervisor(context)
            self.guard = self._build_guard()
            collectors += [
                WorkerCollector(self.supervisor.status),
                TunerCollector(self.guard.view, self._knob_names, self._slo_seconds, self.recent_performance),
            ]
            self.supervisor.start()
        self._sampler = Sampler(collectors, self.store, self._target)
        log.info("collectors: %s", ", ".join(self._sampler.collector_names) or "none")
        # One round before serving, so the first scrape already has data.
        self._sampler.tick()

        self._scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self._scheduler.add_listener(self._on_job_event, EVENT_JOB_ERROR | EVENT_JOB_MAX_INSTANCES)
        self._scheduler.add_job(self._sample_round, "interval", seconds=config.sampling.interval_seconds, id=SAMPLE_JOB_ID)
        if self.guard is not None:
            self._scheduler.add_job(self._tune, "interval", seconds=config.tuning.interval_seconds, id=TUNE_JOB_ID)
        self._scheduler.start()

        host, port = config.metrics.address
        self._server = serve_metrics(build_registry(self.store), host, port)
        log.info("serving metrics on http://%s:%d/metrics", *self.metrics_address)
        self._admin = ServerThread(
            ControlServer(self.admin_socket, self._admin_handler(), group=self._group(), stats_interval=3600.0), "gputuned-admin"
        )
        self._admin.start()

    def _group(self) -> int | None:
        name = self._config.worker.control_group
        if not name:
            return None
        import grp

        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            raise ConfigError(f"worker.control_group: no group named {name!r} on this host") from None

    def _build_supervisor(self, context: CollectorContext) -> Supervisor:
        config = self._config
        self._knob_store.load()
        bus_ids = context.gpu_bus_ids()
        self._worker_gpu = worker_gpu(config.worker.device, len(bus_ids))
        gpu_node = None
        if self._worker_gpu is not None and self._worker_gpu in bus_ids:
            gpu_node = read_pci_numa_node(context.sys_root, bus_ids[self._worker_gpu])
        placement, why = choose_placement(config.worker.placement, gpu_node, context.sys_root)
        log.info("worker placement: %s", why)
        w = config.worker
        policy = RestartPolicy(
            initial_delay=w.restart_backoff_seconds,
            max_delay=w.restart_backoff_max_seconds,
            crash_loop_exits=w.crash_loop_exits,
            crash_loop_window=w.crash_loop_window_seconds,
            ping_interval=w.ping_interval_seconds,
            ping_timeout=w.ping_timeout_seconds,
            drain_timeout=w.drain_timeout_seconds,
        )
        launch = WorkerLaunch(
            command=self._worker_command,
            control_socket=self.worker_socket,
            ready_url=None if w.command else ready_url(w.listen),
            # NVML numbers GPUs in PCI bus order; make CUDA agree so cuda:N is NVML's GPU N.
            env={"GPUTUNED_CONTROL_SOCKET": str(self.worker_socket), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
        )
        return Supervisor(launch, policy, placement, self._knobs_for_hello, self._record_applied)

    def _worker_command(self) -> list[str]:
        """Built at every (re)start, so the last accepted knobs and a reloaded config apply."""
        config = self._config
        if config.worker.command:
            return [word.replace("{control_socket}", str(self.worker_socket)) for word in config.worker.command]
        last = self._knob_store.last_workload
        knobs = self._knob_store.knobs_for(last) if last else {}
        return builtin_worker_command(config, self.worker_socket, knobs)

    def _knobs_for_hello(self, hello: dict[str, Any]) -> dict[str, int]:
        """The saved knobs of the worker's workload that it accepts; the others are forgotten
        (saved for another machine or an older worker, they would be refused at every start)."""
        workload = workload_key(hello)
        self._knob_store.remember_workload(workload)
        saved = self._knob_store.knobs_for(workload)
        specs = {name: KnobSpec.from_wire(name, wire) for name, wire in hello["knobs"].items()}
        refused = {}
        for name, value in saved.items():
            try:
                specs[name].check(value)
            except (KeyError, KnobError):
                refused[name] = value
        if refused:
            log.warning("saved knobs %s are outside what this worker accepts; forgetting them", refused)
            self._knob_store.forget(workload, refused)
        return {name: value for name, value in saved.items() if name not in refused}

    def _record_applied(self, hello: dict[str, Any], applied: dict[str, int]) -> None:
        self._knob_store.accept(workload_key(hello), applied)

    # --- tuning ------------------------------------------------------------------------------

    def _build_guard(self) -> Guard:
        t = self._config.tuning
        settings = GuardSettings(
            slo_seconds=t.slo_p99_ms / 1000,
            baseline_seconds=t.baseline_seconds,
            warmup_seconds=t.warmup_seconds,
            trial_seconds=t.trial_seconds,
            cooldown_seconds=t.cooldown_seconds,
            min_margin=t.min_margin,
            flap_reverts=t.flap_reverts,
            flap_window=t.flap_window_seconds,
            shift_threshold=t.shift_threshold,
        )
        return Guard(
            settings,
            default_tuners(),
            self._tuning_context,
            self._measure_window,
            self._tuning_apply,
            self._record_decision,
            Mode(t.mode),
        )

    def _tune(self) -> None:
        """The tuning job: restart exploration for a new worker, then one guard step."""
        assert self.guard is not None and self.supervisor is not None
        now = time.time()
        pid = self.supervisor.status().pid
        if pid != self._tuned_pid:
            self._tuned_pid = pid
            self.guard.restart_exploration(now)
        self.guard.step(now)

    def _tuning_context(self) -> Context | None:
        assert self.supervisor is not None
        status = self.supervisor.status()
        if status.state is not WorkerState.READY or status.hello is None:
            return None
        identity = status.hello.get("worker", {})
        bounds = {name: (spec["min"], spec["max"]) for name, spec in status.hello["knobs"].items() if spec.get("live", True)}
        spec = identity.get("input", {})
        items = 1
        for dim in spec.get("shape", []):
            items *= int(dim)
        cores = len(status.placement.cpus) if status.placement else len(os.sched_getaffinity(0))
        device = "cuda" if str(identity.get("device", "cpu")).startswith("cuda") else "cpu"
        return Context(status.knobs, bounds, device, cores, items * ITEM_BYTES.get(spec.get("dtype", "FP32"), 4))

    def _ring_mean(self, name: str, labels: tuple[str, ...] | None, start: float, end: float) -> float | None:
        """Mean of a sampled series over [start, end]; labels None averages every series of it."""
        series = (
            [labels]
            if labels is not None
            else sorted({s.labels for snap in self.store.snapshots() for s in snap.samples if s.spec.name == name})
        )
        values = [v for key in series for t, v in self.store.window(name, key) if start <= t <= end]
        return sum(values) / len(values) if values else None

    def _measure_window(self, start: float, end: float, min_coverage: float = 0.5) -> Measurement | None:
        """The worker between two times; None when its reports cover less than `min_coverage` of it."""
        assert self.supervisor is not None
        bounds = self.supervisor.stats_between(start, end)
        if bounds is None:
            return None
        (t0, older), (t1, newer) = bounds
        if t1 - t0 < min_coverage * (end - start):
            return None  # the reports do not cover enough of the window
        gpu = self._worker_gpu
        if gpu is None:
            device_busy = self._ring_mean("gputuned_host_cpu_busy_ratio", None, t0, t1)
            pcie = None
        else:
            device_busy = self._ring_mean("gputuned_gpu_utilization_ratio", (str(gpu),), t0, t1)
            pcie = self._ring_mean("gputuned_pcie_utilization_ratio", (str(gpu),), t0, t1)
        return measure(older, newer, t1 - t0, self._slo_seconds(), device_busy, pcie)

    def _knob_names(self) -> list[str]:
        assert self.supervisor is not None
        return list(self.supervisor.status().knobs)

    def _slo_seconds(self) -> float:
        return self._config.tuning.slo_p99_ms / 1000

    def recent_performance(self) -> Measurement | None:
        """The worker over the last PERFORMANCE_WINDOW_SECONDS (or since its first report), for
        status and sd_notify."""
        now = time.time()
        return self._measure_window(now - PERFORMANCE_WINDOW_SECONDS, now, min_coverage=0.0)

    def _tuning_apply(self, changes: dict[str, int]) -> dict[str, int]:
        assert self.supervisor is not None
        return self.supervisor.set_knobs(changes, persist=False)

    def _record_decision(self, decision: Decision) -> None:
        """Appends the decision to STATE_DIR/decisions.jsonl; a kept change is persisted as accepted."""
        assert self.supervisor is not None
        if decision.action == "keep":
            status = self.supervisor.status()
            if status.hello is not None:
                self._knob_store.accept(workload_key(status.hello), dict(status.knobs))
        path = Path(self._config.paths.state_dir) / "decisions.jsonl"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as log_file:
                log_file.write(json.dumps(decision.to_json(), separators=(",", ":")) + "\n")
            self._decision_log_error = None
        except OSError as exc:
            if self._decision_log_error is None:
                log.warning("cannot append to %s (%s); decisions stay in memory", path, exc.strerror or exc)
            self._decision_log_error = str(exc)

    def manual_set(self, changes: dict[str, int]) -> dict[str, int]:
        """`gputuned set`: applies, records as accepted, and freezes those knobs for the tuner."""
        assert self.supervisor is not None
        applied = self.supervisor.set_knobs(changes)
        if self.guard is not None:
            self.guard.freeze(list(applied))
        return applied

    def tune(self, mode: str | None, resume: bool) -> dict[str, Any]:
        """`gputuned tune`: changes the tuner's mode and/or unfreezes hand-set knobs."""
        if self.guard is None:
            raise KnobError("this daemon runs without a worker (--no-worker); there is nothing to tune")
        if mode is not None:
            try:
                self.guard.set_mode(Mode(mode))
            except ValueError:
                raise KnobError(f"mode {mode!r} is not one of auto, recommend, frozen") from None
        if resume:
            self.guard.resume()
        return self.status_report()

    def _admin_handler(self) -> AdminHandler:
        def worker_hello() -> dict[str, Any] | None:
            if self.supervisor is None:
                return None
            status = self.supervisor.status()
            if status.hello is None:
                return None
            knobs = {
                name: {**spec, "value": status.knobs.get(name, spec["value"])} for name, spec in status.hello["knobs"].items()
            }
            return {**status.hello, "knobs": knobs}

        return AdminHandler(self.status_report, worker_hello, self.manual_set if self.supervisor else None, self.tune)

    def status_report(self) -> dict[str, Any]:
        worker = self.supervisor.status() if self.supervisor else None
        performance = self.recent_performance() if self.supervisor else None
        host, port = self.metrics_address
        tuner = self.guard.view() if self.guard else None
        return build_status(
            self.store, worker, performance, self._started_at, f"http://{host}:{port}/metrics", tuner, self.state_error()
        )

    def state_error(self) -> str | None:
        """Why the state directory cannot be written (knobs and decisions then live in memory only)."""
        errors = [
            f"knobs.json: {self._knob_store.persist_error}" if self._knob_store.persist_error else None,
            f"decisions.jsonl: {self._decision_log_error}" if self._decision_log_error else None,
        ]
        return "; ".join(error for error in errors if error) or None

    # --- the work loop ----------------------------------------------------------------------

    def _sample_round(self) -> None:
        """The scheduled job: sample, then tell systemd we are alive (only if sampling ran)."""
        assert self._sampler is not None
        self._sampler.tick()
        now = time.monotonic()
        interval = self.notifier.watchdog_interval
        # Ping now if waiting for the next round would stretch the gap past the interval.
        if interval is not None and now - self._last_watchdog + self._config.sampling.interval_seconds > interval:
            self.notifier.watchdog()
            self._last_watchdog = now
        if self.notifier.enabled and now - self._last_status >= STATUS_EVERY_SECONDS:
            self.notifier.status(self.status_line())
            self._last_status = now

    def status_line(self) -> str:
        """One line for systemd's STATUS=: worker state, throughput, p99, knobs."""
        if self.supervisor is None:
            return "monitoring (no worker)"
        status = self.supervisor.status()
        performance = self.recent_performance()
        parts = [f"worker {status.state.value}"]
        if performance is not None:
            p99 = f"{performance.p99 * 1000:.1f} ms" if performance.p99 is not None else "-"
            parts.append(f"{performance.throughput:.1f} req/s, p99 {p99}")
        if status.knobs:
            parts.append(" ".join(f"{k}={v}" for k, v in sorted(status.knobs.items())))
        if self.state_error():
            parts.append("state not saved, kept in memory")
        return "; ".join(parts)

    def wait_until_ready(self, timeout: float) -> None:
        """Sends READY=1 once the first sample is taken and the worker is ready (or given up on)."""
        if self.supervisor is not None:
            self.supervisor.wait_ready(timeout)
        self.notifier.ready(self.status_line())
        self._ready_sent = True

    def _on_job_event(self, event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_MAX_INSTANCES:
            self.store.count_skipped_round()
        elif event.exception is not None:
            log.error("job %s failed: %s", event.job_id, event.exception)

    # --- reload and stop ----------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: re-reads the config; an invalid one is refused and the running one kept."""
        try:
            new = load_config(self._config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        old = self._config
        logging.getLogger().setLevel(new.log.level.upper())
        if new.sampling.interval_seconds != old.sampling.interval_seconds and self._scheduler is not None:
            self._scheduler.reschedule_job(SAMPLE_JOB_ID, trigger="interval", seconds=new.sampling.interval_seconds)
        needs_restart = [name for name in ("metrics", "collectors", "nvml", "paths") if getattr(new, name) != getattr(old, name)]
        if needs_restart:
            log.warning("reload: changes to [%s] take effect when the daemon restarts", ", ".join(needs_restart))
        if new.worker != old.worker:
            log.info("reload: worker settings take effect at the worker's next start")
        self._config = new
        log.info("configuration reloaded")

    def stop(self) -> None:
        """Stops tuning, drains the worker, then stops sampling, the servers, and releases NVML."""
        self.notifier.stopping()
        if self._scheduler is not None and self._scheduler.get_job(TUNE_JOB_ID) is not None:
            # No decision about a worker that is draining (a trial in flight is simply not kept).
            self._scheduler.remove_job(TUNE_JOB_ID)
        if self.supervisor is not None:
            code = self.supervisor.stop()
            log.info("worker exited with code %s", code)
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
