"""The tuner collector: what the tuning loop did, from the guard's own view."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gputuned.samples import Collected, MetricSpec, WorkerTarget

DECISIONS = MetricSpec("gputuned_tuner_decisions_total", "counter", "Tuning decisions by knob and action.", ("knob", "action"))
TRIAL_ACTIVE = MetricSpec("gputuned_tuner_trial_active", "gauge", "1 while a change is on trial.", ())
MODE = MetricSpec("gputuned_tuner_mode", "gauge", "1 for the tuner's current mode.", ("mode",))
FROZEN = MetricSpec("gputuned_tuner_knob_frozen", "gauge", "1 for a knob set by hand and left alone until resumed.", ("knob",))

SPECS = (DECISIONS, TRIAL_ACTIVE, MODE, FROZEN)
MODES = ("auto", "recommend", "frozen")


class TunerCollector:
    name = "tuner"

    def __init__(self, view: Callable[[], Any]) -> None:
        """`view` returns the guard's GuardView."""
        self._view = view

    def collect(self, target: WorkerTarget) -> Collected:
        out = Collected()
        view = self._view()
        for (knob, action), count in sorted(view.counts.items()):
            out.add(DECISIONS, count, knob, action)
        out.add(TRIAL_ACTIVE, 1 if view.trial_active else 0)
        for mode in MODES:
            out.add(MODE, 1 if view.mode == mode else 0, mode)
        for knob in view.frozen_knobs:
            out.add(FROZEN, 1, knob)
        return out

    def close(self) -> None:
        """Holds nothing that needs releasing."""
