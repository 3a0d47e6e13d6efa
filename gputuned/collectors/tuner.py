"""The tuner collector: what the tuning loop did, from the guard's own view."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gputuned.control.messages import ALL_KNOBS, KNOB_ACTIONS, WORKLOAD_ACTIONS
from gputuned.performance import GenerativeObjectives, Measurement
from gputuned.samples import Collected, MetricSpec, WorkerTarget
from gputuned.tuners.mode import MODE_NAMES

WORKER = ("worker",)
DECISIONS = MetricSpec(
    "gputuned_tuner_decisions_total", "counter", "Tuning decisions by knob and action.", ("worker", "knob", "action")
)
TRIAL_ACTIVE = MetricSpec("gputuned_tuner_trial_active", "gauge", "1 while a change is on trial.", WORKER)
MODE = MetricSpec("gputuned_tuner_mode", "gauge", "1 for the tuner's current mode.", ("worker", "mode"))
FROZEN = MetricSpec(
    "gputuned_tuner_knob_frozen", "gauge", "1 for a knob set by hand and left alone until resumed.", ("worker", "knob")
)
SLO = MetricSpec("gputuned_tuner_slo_p99_seconds", "gauge", "The p99 latency objective the tuner holds the worker to.", WORKER)
SLO_TTFT = MetricSpec("gputuned_tuner_slo_ttft_seconds", "gauge", "The time-to-first-token objective of an LLM worker.", WORKER)
SLO_TPOT = MetricSpec("gputuned_tuner_slo_tpot_seconds", "gauge", "The time-per-output-token objective of an LLM worker.", WORKER)
GOODPUT = MetricSpec(
    "gputuned_tuner_goodput_requests_per_second",
    "gauge",
    "Requests completed within the objectives per second over the last 10 s, as the tuner measures them "
    "(for an LLM worker: within both its TTFT and TPOT objectives).",
    WORKER,
)
PADDING = MetricSpec(
    "gputuned_tuner_padding_ratio",
    "gauge",
    "Padding over all the tokens a variable-length model's batches computed over the last 10 s, 0-1, as the tuner measures it.",
    WORKER,
)
VERDICT_WINDOWS = MetricSpec(
    "gputuned_tuner_verdict_windows_total",
    "counter",
    "Measured windows the tuner's keep and revert verdicts compared: 2 where one trial window against its baseline "
    "settled it, more where the difference was within the noise and the settings were interleaved.",
    WORKER,
)

GENERATIVE_SPECS = (SLO_TTFT, SLO_TPOT)  # exported for an LLM worker only
TOKEN_SPECS = (PADDING,)  # exported for a worker serving a variable-length model only
SPECS = (DECISIONS, TRIAL_ACTIVE, MODE, FROZEN, SLO, SLO_TTFT, SLO_TPOT, GOODPUT, PADDING, VERDICT_WINDOWS)


class TunedWorker(Protocol):
    """What the collector reads of a tuned worker (a daemon slot)."""

    @property
    def name(self) -> str: ...

    def tuner_view(self) -> Any:
        """The guard's GuardView."""
        ...

    def knob_names(self) -> list[str]:
        """The worker's knobs, whose decision counters start at 0 so that Prometheus's
        increase() sees even the first decision."""
        ...

    def slo_seconds(self) -> float:
        """The SLO the guard holds the worker to (it changes on reload)."""
        ...

    def generative_objectives(self) -> GenerativeObjectives:
        """Its TTFT and TPOT objectives, should it be an LLM worker."""
        ...

    def recent_performance(self) -> Measurement | None:
        """The worker's recent Measurement: its goodput, the figure the tuner maximises, is
        exported because no PromQL over the latency histogram can count requests within an
        SLO that falls between its buckets."""
        ...


class TunerCollector:
    """What each worker's tuning loop did, from its guard's own view, labelled `worker`."""

    name = "tuner"

    def __init__(self, workers: Callable[[], Sequence[TunedWorker]]) -> None:
        self._workers = workers

    def collect(self, targets: Sequence[WorkerTarget]) -> Collected:  # noqa: ARG002 - the Collector protocol; reads the slots
        out = Collected()
        for worker in self._workers():
            self._collect_worker(worker, out)
        return out

    @staticmethod
    def _collect_worker(worker: TunedWorker, out: Collected) -> None:
        name, view = worker.name, worker.tuner_view()
        counts = {(knob, action.value): 0 for knob in worker.knob_names() for action in KNOB_ACTIONS}
        counts.update({(ALL_KNOBS, action.value): 0 for action in WORKLOAD_ACTIONS})
        counts.update(view.counts)
        for (knob, action), count in sorted(counts.items()):
            out.add(DECISIONS, count, name, knob, action)
        out.add(TRIAL_ACTIVE, 1 if view.trial_active else 0, name)
        out.add(VERDICT_WINDOWS, view.verdict_windows, name)
        for mode in MODE_NAMES:
            out.add(MODE, 1 if view.mode == mode else 0, name, mode)
        for knob in view.frozen_knobs:
            out.add(FROZEN, 1, name, knob)
        out.add(SLO, worker.slo_seconds(), name)
        performance = worker.recent_performance()
        if performance is not None:
            out.add(GOODPUT, performance.goodput, name)
        if performance is not None and performance.tokens is not None:
            out.add(PADDING, performance.tokens.padding_share, name)
        if performance is not None and performance.generation is not None:
            objectives = worker.generative_objectives()
            out.add(SLO_TTFT, objectives.ttft, name)
            out.add(SLO_TPOT, objectives.tpot, name)

    def close(self) -> None:
        """Holds nothing that needs releasing."""
