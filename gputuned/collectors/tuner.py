"""The tuner collector: what the tuning loop did, from the guard's own view."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from gputuned.performance import Measurement
from gputuned.samples import Collected, MetricSpec, WorkerTarget
from gputuned.tuners.guard import KNOB_ACTIONS
from gputuned.tuners.mode import MODE_NAMES

DECISIONS = MetricSpec("gputuned_tuner_decisions_total", "counter", "Tuning decisions by knob and action.", ("knob", "action"))
TRIAL_ACTIVE = MetricSpec("gputuned_tuner_trial_active", "gauge", "1 while a change is on trial.", ())
MODE = MetricSpec("gputuned_tuner_mode", "gauge", "1 for the tuner's current mode.", ("mode",))
FROZEN = MetricSpec("gputuned_tuner_knob_frozen", "gauge", "1 for a knob set by hand and left alone until resumed.", ("knob",))
SLO = MetricSpec("gputuned_tuner_slo_p99_seconds", "gauge", "The p99 latency objective the tuner holds the worker to.", ())
GOODPUT = MetricSpec(
    "gputuned_tuner_goodput_requests_per_second",
    "gauge",
    "Requests completed within the SLO per second over the last 10 s, as the tuner measures them.",
    (),
)

SPECS = (DECISIONS, TRIAL_ACTIVE, MODE, FROZEN, SLO, GOODPUT)


class TunerCollector:
    name = "tuner"

    def __init__(
        self,
        view: Callable[[], Any],
        knobs: Callable[[], Iterable[str]],
        slo_seconds: Callable[[], float],
        performance: Callable[[], Measurement | None],
    ) -> None:
        """`view` returns the guard's GuardView; `knobs` the worker's knob names, whose decision
        counters start at 0 so that Prometheus's increase() sees even the first decision;
        `slo_seconds` the configured SLO (it changes on reload); `performance` the worker's recent
        Measurement, the figure the tuner maximises, exported because no PromQL over the latency
        histogram can count requests within an SLO that falls between its buckets."""
        self._view = view
        self._knobs = knobs
        self._slo_seconds = slo_seconds
        self._performance = performance

    def collect(self, target: WorkerTarget) -> Collected:
        out = Collected()
        view = self._view()
        counts = {(knob, action): 0 for knob in self._knobs() for action in KNOB_ACTIONS}
        counts[("*", "shift")] = 0
        counts.update(view.counts)
        for (knob, action), count in sorted(counts.items()):
            out.add(DECISIONS, count, knob, action)
        out.add(TRIAL_ACTIVE, 1 if view.trial_active else 0)
        for mode in MODE_NAMES:
            out.add(MODE, 1 if view.mode == mode else 0, mode)
        for knob in view.frozen_knobs:
            out.add(FROZEN, 1, knob)
        out.add(SLO, self._slo_seconds())
        performance = self._performance()
        if performance is not None:
            out.add(GOODPUT, performance.goodput)
        return out

    def close(self) -> None:
        """Holds nothing that needs releasing."""
