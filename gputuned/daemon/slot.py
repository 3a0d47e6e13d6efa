"""One supervised worker and everything that is its own: the supervisor, the tuning loop,
the knob store, the decision log and the stats history.

The daemon holds a list of slots and a slot never reaches into another, so one worker
crashing, hanging, being drained or being tuned touches nothing else. Building a slot does
no I/O; `start` reads the saved knobs and starts the supervisor thread.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from gputuned.collectors import gpm, host, nvml, pcie
from gputuned.config import TuningConfig, WorkerConfig, tuner_mode
from gputuned.control.client import ControlError
from gputuned.daemon.decisions import DecisionLog
from gputuned.daemon.history import StatsHistory
from gputuned.daemon.launch import worker_launch
from gputuned.daemon.plans import SlotPlan
from gputuned.daemon.restarts import RestartPolicy
from gputuned.daemon.state import KnobStore, workload_key
from gputuned.daemon.status import WorkerSnapshot
from gputuned.daemon.supervisor import Supervisor, WorkerStatus
from gputuned.daemon.tuning import TuningLoop
from gputuned.knobs import KnobError, KnobSpec
from gputuned.performance import DeviceReadings, GenerativeObjectives, Measurement
from gputuned.samples import WorkerTarget
from gputuned.store import SampleStore
from gputuned.tuners.guard import GuardView
from gputuned.tuners.mode import Mode
from gputuned.tuners.turns import TrialTurns

log = logging.getLogger(__name__)


def trial_group(tuning: TuningConfig, plan: SlotPlan) -> str:
    """Whose trials this worker's take turns with: the whole host's, or its NUMA node's."""
    if tuning.trials == "one_per_numa_node" and plan.placement is not None:
        return f"node{plan.placement.node}"
    return "host"


def restart_policy(worker: WorkerConfig) -> RestartPolicy:
    return RestartPolicy(
        initial_delay=worker.restart_backoff_seconds,
        max_delay=worker.restart_backoff_max_seconds,
        crash_loop_exits=worker.crash_loop_exits,
        crash_loop_window=worker.crash_loop_window_seconds,
        ping_interval=worker.ping_interval_seconds,
        ping_timeout=worker.ping_timeout_seconds,
        drain_timeout=worker.drain_timeout_seconds,
        start_timeout=worker.start_timeout,
    )


def _for_worker(tuning: TuningConfig, worker: WorkerConfig) -> TuningConfig:
    """[tuning] as this worker's tuner takes it: with the mode it starts in (config.tuner_mode)
    and the worker's own objectives where its table sets them."""
    return dataclasses.replace(
        tuning,
        mode=tuner_mode(worker, tuning),
        slo_p99_ms=worker.slo_p99_ms or tuning.slo_p99_ms,
        slo_ttft_ms=worker.slo_ttft_ms or tuning.slo_ttft_ms,
        slo_tpot_ms=worker.slo_tpot_ms or tuning.slo_tpot_ms,
    )


class WorkerSlot:
    def __init__(self, plan: SlotPlan, worker: WorkerConfig, tuning: TuningConfig, store: SampleStore, turns: TrialTurns) -> None:
        """`turns` are the trial turns this worker shares with its neighbours on the host."""
        self.name = plan.name
        self.plan = plan
        self._worker_config = worker
        self._store = store
        self.knob_store = KnobStore(plan.state_dir)
        self.history = StatsHistory()
        self.decision_log = DecisionLog(plan.state_dir / "decisions.jsonl")
        launch = worker_launch(
            lambda: self._worker_config, plan.control_socket, self._last_accepted_knobs, plan.state_dir / "cache"
        )
        self.supervisor = Supervisor(
            launch, restart_policy(worker), plan.placement, self.history, self._knobs_for_hello, self._record_applied
        )
        self.tuning = TuningLoop(
            _for_worker(tuning, worker),
            self.supervisor,
            self.history.between,
            self._device_signals,
            self._persist_knobs,
            self.decision_log.append,
            turn=turns.member(plan.name, trial_group(tuning, plan)),
        )

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self.knob_store.load()
        self.supervisor.start()

    def stop(self) -> int | None:
        """Drains the worker; returns its exit code."""
        return self.supervisor.stop()

    def reconfigure(self, worker: WorkerConfig, tuning: TuningConfig) -> None:
        """A reload: the [worker] table applies at the worker's next start, [tuning] at the next step."""
        if worker != self._worker_config:
            log.info("reload: worker %s's settings take effect at its next start", self.name)
        self._worker_config = worker
        self.tuning.reconfigure(_for_worker(tuning, worker))

    # --- what others read (snapshots, never a wait on the worker) -----------------------------

    def status(self) -> WorkerStatus:
        return self.supervisor.status()

    def snapshot(self) -> WorkerSnapshot:
        status = self.supervisor.status()
        generative = status.stats is not None and "ttft_seconds" in status.stats
        return WorkerSnapshot(
            self.name,
            status,
            self.tuning.recent(),
            self.tuning.guard.view(),
            self.state_error(),
            self.slo_seconds(),
            self.generative_objectives() if generative else None,
            self.tuning.guard.settings.objective,
        )

    @property
    def gpu(self) -> int | None:
        return self.plan.gpu

    def target(self) -> WorkerTarget:
        return WorkerTarget(pid=self.supervisor.status().pid, gpu=self.plan.gpu, name=self.name)

    def recent_performance(self) -> Measurement | None:
        return self.tuning.recent()

    def tuner_view(self) -> GuardView:
        return self.tuning.guard.view()

    def knob_names(self) -> list[str]:
        return list(self.supervisor.status().knobs)

    def slo_seconds(self) -> float:
        return self.tuning.slo_seconds

    def generative_objectives(self) -> GenerativeObjectives:
        return self.tuning.generative_objectives

    def state_error(self) -> str | None:
        """Why the state directory cannot be written (knobs and decisions then live in memory only)."""
        errors = [
            f"knobs.json: {self.knob_store.persist_error}" if self.knob_store.persist_error else None,
            f"decisions.jsonl: {self.decision_log.error}" if self.decision_log.error else None,
        ]
        return "; ".join(error for error in errors if error) or None

    def hello(self) -> dict[str, Any] | None:
        """The worker's hello with the knob values held now (for the admin socket's hello)."""
        status = self.supervisor.status()
        if status.hello is None:
            return None
        knobs = {name: {**spec, "value": status.knobs.get(name, spec["value"])} for name, spec in status.hello["knobs"].items()}
        return {**status.hello, "knobs": knobs}

    # --- what operators do -------------------------------------------------------------------

    def manual_set(self, changes: dict[str, int]) -> dict[str, int]:
        """`gputuned set`: applies, records as accepted, and freezes those knobs for the tuner."""
        try:
            applied = self.supervisor.set_knobs(changes)
        except ControlError as exc:
            raise KnobError(str(exc)) from None
        self.tuning.guard.freeze(list(applied))
        return applied

    def tune(self, mode: str | None, resume: bool) -> None:
        """`gputuned tune`: changes the tuner's mode and/or unfreezes hand-set knobs."""
        if mode is not None:
            try:
                self.tuning.guard.set_mode(Mode(mode))
            except ValueError:
                raise KnobError(f"mode {mode!r} is not one of {', '.join(m.value for m in Mode)}") from None
        if resume:
            self.tuning.guard.resume()

    # --- the supervisor's and the tuning loop's callbacks -----------------------------------------

    def _last_accepted_knobs(self) -> dict[str, int]:
        last = self.knob_store.last_workload
        return self.knob_store.knobs_for(last) if last else {}

    def _knobs_for_hello(self, hello: dict[str, Any]) -> dict[str, int]:
        """The saved knobs of the worker's workload that it accepts; the others are forgotten
        (saved for another machine or an older worker, they would be refused at every start)."""
        workload = workload_key(hello)
        self.knob_store.remember_workload(workload)
        saved = self.knob_store.knobs_for(workload)
        specs = {name: KnobSpec.from_wire(name, wire) for name, wire in hello["knobs"].items()}
        refused = {}
        for name, value in saved.items():
            try:
                specs[name].check(value)
            except (KeyError, KnobError):
                refused[name] = value
        if refused:
            log.warning("saved knobs %s are outside what this worker (%s) accepts; forgetting them", refused, self.name)
            self.knob_store.forget(workload, refused)
        return {name: value for name, value in saved.items() if name not in refused}

    def _record_applied(self, hello: dict[str, Any], applied: dict[str, int]) -> None:
        """A hand set: its values become the workload's accepted ones, here and in the worker."""
        self.knob_store.accept(workload_key(hello), applied)
        self.supervisor.report_accepted(dict(self.supervisor.status().knobs))

    def _persist_knobs(self) -> None:
        """A kept change: the worker's knobs as they are now become its workload's accepted ones."""
        status = self.supervisor.status()
        if status.hello is not None:
            self.knob_store.accept(workload_key(status.hello), dict(status.knobs))
            self.supervisor.report_accepted(dict(status.knobs))

    def _device_signals(self, start: float, end: float) -> DeviceReadings:
        """What the collectors saw of the worker's device over a window: its GPU's busy share,
        PCIe utilisation, SM activity and the energy attributed to the worker, or the host
        CPUs' busy share on a CPU worker."""
        gpu = self.plan.gpu
        if gpu is None:
            return DeviceReadings(busy=self._store.mean(host.CPU_BUSY.name, None, start, end))
        labels = (str(gpu),)
        return DeviceReadings(
            busy=self._store.mean(nvml.UTILIZATION.name, labels, start, end),
            pcie_utilization=self._store.mean(pcie.UTILIZATION.name, labels, start, end),
            sm_active=self._store.mean(gpm.SM_ACTIVE.name, (str(gpu), ""), start, end),
            watts=self._store.rate(nvml.WORKER_ENERGY.name, (self.name, str(gpu)), start, end),
        )
