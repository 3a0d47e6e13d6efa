"""The tuning loop of one worker: measured windows in, the guard's decisions out.

The tuning job calls `step()` every `tuning.interval_seconds`, in a scheduler thread of
its own; it is the only caller of the guard's state machine. Everything else (status,
the metrics) reads the guard's `view()` and its settings, which are replaced whole.

Windows are measured on the monotonic clock the worker stamps its stats with; the wall
clock only stamps decisions. A reload's new `[tuning]` section is handed over with
`reconfigure` and taken whole at the start of the next step, so the guard, the exported
SLO and the goodput it is measured by always use one value.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from gputuned.config import TuningConfig
from gputuned.control.messages import Decision
from gputuned.daemon.history import Report
from gputuned.daemon.supervisor import WorkerState
from gputuned.datatypes import DATATYPES
from gputuned.performance import DeviceReadings, GenerativeObjectives, Measurement, measure
from gputuned.tuners import default_tuners
from gputuned.tuners.guard import Context, Guard, GuardSettings
from gputuned.tuners.mode import Mode
from gputuned.tuners.turns import TrialTurn

log = logging.getLogger(__name__)

RECENT_SECONDS = 10.0  # the window status, sd_notify and the goodput metric describe

# (start, end) -> what the collectors saw of the worker's device over that window.
DeviceSignals = Callable[[float, float], DeviceReadings]
# (start, end) -> the bounding stats reports ((t, stats), (t, stats)), or None.
StatsBetween = Callable[[float, float], tuple[Report, Report] | None]


def guard_settings(tuning: TuningConfig) -> GuardSettings:
    return GuardSettings(
        slo_seconds=tuning.slo_p99_ms / 1000,
        baseline_seconds=tuning.baseline_seconds,
        warmup_seconds=tuning.warmup_seconds,
        trial_seconds=tuning.trial_seconds,
        cooldown_seconds=tuning.cooldown_seconds,
        min_margin=tuning.min_margin,
        flap_reverts=tuning.flap_reverts,
        flap_window=tuning.flap_window_seconds,
        shift_threshold=tuning.shift_threshold,
        confirm_windows=tuning.confirm_windows,
        explore_patience=tuning.explore_patience,
        reexplore_seconds=tuning.reexplore_seconds,
        objective=tuning.objective,
    )


def tuning_context(hello: dict[str, Any], knobs: dict[str, int], cores: int) -> Context:
    """What the tuners need to know of a connected worker, from its hello: the live knobs'
    bounds, CPU or CUDA, the cores it may use and the bytes of one input item."""
    identity = hello.get("worker", {})
    bounds = {name: (spec["min"], spec["max"]) for name, spec in hello["knobs"].items() if spec.get("live", True)}
    spec = identity.get("input", {})
    items = 1
    for dim in spec.get("shape", []):
        items *= int(dim)
    datatype = DATATYPES.get(spec.get("dtype", "FP32"), DATATYPES["FP32"])
    device = "cuda" if str(identity.get("device", "cpu")).startswith("cuda") else "cpu"
    return Context(knobs, bounds, device, cores, items * datatype.item_bytes)


class TuningLoop:
    def __init__(
        self,
        tuning: TuningConfig,
        worker: Any,
        stats_between: StatsBetween,
        device_signals: DeviceSignals,
        on_kept: Callable[[], None],
        record: Callable[[Decision], None],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        turn: TrialTurn | None = None,
    ) -> None:
        """`tuning` is [tuning] as this worker takes it, its `mode` the one the worker's tuner
        starts in (config.tuner_mode); `worker` is the Supervisor (status() and set_knobs()); `on_kept()` persists the
        worker's knobs after a kept change; `record(decision)` writes the decision log; `turn`
        is the worker's place in its neighbours' trial turns."""
        self._worker = worker
        self._stats_between = stats_between
        self._device_signals = device_signals
        self._on_kept = on_kept
        self._record = record
        self._clock = clock
        self._pending: TuningConfig | None = None
        self._stepping = threading.Lock()  # one step at a time, and none once finished
        self._finished = False
        self._tuning = tuning
        self._tuned_pid: int | None = None
        self.guard = Guard(
            guard_settings(tuning),
            default_tuners(),
            self._context,
            self.measure,
            self._apply,
            self._decided,
            Mode(tuning.mode),
            wall_clock,
            turn,
            clock,
        )

    @property
    def slo_seconds(self) -> float:
        return self.guard.settings.slo_seconds

    @property
    def generative_objectives(self) -> GenerativeObjectives:
        """A generative worker's TTFT and TPOT objectives (the worker's own, else [tuning]'s)."""
        return GenerativeObjectives(self._tuning.slo_ttft_ms / 1000, self._tuning.slo_tpot_ms / 1000)

    def reconfigure(self, tuning: TuningConfig) -> None:
        """A reloaded [tuning] section; taken whole at the start of the next step."""
        if tuning != self._tuning:
            self._pending = tuning

    def step(self) -> None:
        """The tuning job: new settings first, exploration afresh for a new worker, then one guard step."""
        with self._stepping:
            if not self._finished:
                self._step()

    def finish(self, why: str) -> None:
        """The daemon is stopping: waits for a step in flight (a set being applied), then puts
        a change on trial back to the accepted knobs while the worker's control connection is
        still open, so a server that outlives the daemon keeps the accepted knobs. No step runs after."""
        with self._stepping:
            self._finished = True
            self.guard.abandon(self._clock(), why)

    def _step(self) -> None:
        now = self._clock()
        pending, self._pending = self._pending, None
        if pending is not None:
            mode = Mode(pending.mode) if pending.mode != self._tuning.mode else None
            self.guard.reconfigure(guard_settings(pending), mode, now)
            self._tuning = pending
            log.info("tuning settings reloaded: SLO p99 %g ms, mode %s", pending.slo_p99_ms, self.guard.mode.value)
        pid = self._worker.status().pid
        if pid != self._tuned_pid:
            self._tuned_pid = pid
            self.guard.restart_exploration(now)
        self.guard.step(now)

    def measure(self, start: float, end: float, min_coverage: float = 0.5) -> Measurement | None:
        """The worker between two monotonic times; None when its reports cover less than
        `min_coverage` of the window."""
        bounds = self._stats_between(start, end)
        if bounds is None:
            return None
        (t0, older), (t1, newer) = bounds
        if t1 - t0 < min_coverage * (end - start):
            return None
        device = self._device_signals(t0, t1)
        return measure(older, newer, t1 - t0, self.slo_seconds, device, self.generative_objectives)

    def series(self, span: float, step: float) -> list[tuple[float, float, float | None]]:
        """(seconds ago, goodput, p99) of each `step`-long window over the last `span` seconds,
        oldest first, where the worker reported (the status page's plot)."""
        now = self._clock()
        points = []
        for index in range(int(span // step), 0, -1):
            window = self.measure(now - index * step, now - (index - 1) * step)
            if window is not None:
                points.append(((index - 0.5) * step, window.goodput, window.p99))
        return points

    def recent(self) -> Measurement | None:
        """The worker over the last RECENT_SECONDS (or since its first report)."""
        now = self._clock()
        return self.measure(now - RECENT_SECONDS, now, min_coverage=0.0)

    def _context(self) -> Context | None:
        status = self._worker.status()
        if status.state is not WorkerState.READY or status.hello is None:
            return None
        cores = len(status.placement.cpus) if status.placement else len(os.sched_getaffinity(0))
        return tuning_context(status.hello, status.knobs, cores)

    def _apply(self, changes: dict[str, int]) -> dict[str, int]:
        applied: dict[str, int] = self._worker.set_knobs(changes, persist=False)
        return applied

    def _decided(self, decision: Decision) -> None:
        if decision.action == "keep":
            self._on_kept()
        self._record(decision)
