"""The tuner collector: decision counters exist from 0, the SLO and the tuner's goodput are served."""

from __future__ import annotations

from gputuned.collectors.tuner import TunerCollector
from gputuned.performance import Measurement
from gputuned.samples import WorkerTarget
from gputuned.tuners.guard import GuardView
from tests.helpers import settled_window

MEASURED = settled_window(
    seconds=10.0,
    arrival_rate=120.0,
    throughput=118.0,
    goodput=110.0,
    p99=0.09,
    mean_batch=4.0,
    batch_seconds=0.02,
    busy_ratio=0.5,
    queue_depth=2,
    in_system=0.0,
    items_per_request=0.0,
)


class Tuned:
    """A worker as the collector sees it (the daemon's slot offers the same)."""

    def __init__(self, name: str, view: GuardView, performance: Measurement | None, slo: float = 0.1) -> None:
        self.name, self._view, self._performance, self._slo = name, view, performance, slo

    def tuner_view(self) -> GuardView:
        return self._view

    def knob_names(self) -> list[str]:
        return ["max_batch_size", "streams"]

    def slo_seconds(self) -> float:
        return self._slo

    def recent_performance(self) -> Measurement | None:
        return self._performance


def collect(*workers: Tuned) -> dict[tuple[str, tuple[str, ...]], float]:
    collector = TunerCollector(lambda: workers)
    return {(s.spec.name, s.labels): s.value for s in collector.collect([WorkerTarget()]).samples}


def collect_one(view: GuardView, performance: Measurement | None) -> dict[tuple[str, tuple[str, ...]], float]:
    """The series of a worker named w, without its label."""
    return {(name, labels[1:]): value for (name, labels), value in collect(Tuned("w", view, performance)).items()}


def test_every_knob_and_action_is_counted_from_zero_so_the_first_decision_shows_in_increase():
    view = GuardView("auto", "trial", True, [], [], {("streams", "apply"): 2})
    samples = collect_one(view, MEASURED)
    decisions = {labels: value for (name, labels), value in samples.items() if name == "gputuned_tuner_decisions_total"}
    assert decisions[("streams", "apply")] == 2
    assert decisions[("max_batch_size", "revert")] == 0 and decisions[("*", "shift")] == decisions[("*", "converge")] == 0
    assert len(decisions) == 2 * 5 + 2
    assert samples[("gputuned_tuner_slo_p99_seconds", ())] == 0.1
    assert samples[("gputuned_tuner_goodput_requests_per_second", ())] == 110.0
    assert samples[("gputuned_tuner_trial_active", ())] == 1


def test_no_goodput_before_the_worker_has_reported():
    samples = collect_one(GuardView("recommend", "baseline", False, [], [], {}), None)
    assert ("gputuned_tuner_goodput_requests_per_second", ()) not in samples
    assert samples[("gputuned_tuner_mode", ("recommend",))] == 1


def test_each_worker_has_its_own_series():
    first = Tuned("gpu0", GuardView("auto", "trial", True, [], [], {("streams", "apply"): 1}), MEASURED, slo=0.1)
    second = Tuned("gpu1", GuardView("frozen", "settled", False, ["streams"], [], {}), None, slo=0.05)
    samples = collect(first, second)
    assert samples[("gputuned_tuner_slo_p99_seconds", ("gpu0",))] == 0.1
    assert samples[("gputuned_tuner_slo_p99_seconds", ("gpu1",))] == 0.05
    assert samples[("gputuned_tuner_decisions_total", ("gpu0", "streams", "apply"))] == 1
    assert samples[("gputuned_tuner_decisions_total", ("gpu1", "streams", "apply"))] == 0
    assert samples[("gputuned_tuner_trial_active", ("gpu0",))] == 1 and samples[("gputuned_tuner_trial_active", ("gpu1",))] == 0
    assert samples[("gputuned_tuner_knob_frozen", ("gpu1", "streams"))] == 1
    assert ("gputuned_tuner_goodput_requests_per_second", ("gpu1",)) not in samples
