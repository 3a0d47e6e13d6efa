"""The tuner collector: decision counters exist from 0, the SLO and the tuner's goodput are served."""

from __future__ import annotations

from gputuned.collectors.tuner import TunerCollector
from gputuned.performance import Measurement
from gputuned.samples import WorkerTarget
from gputuned.tuners.guard import GuardView

MEASURED = Measurement(
    seconds=10.0,
    arrival_rate=120.0,
    throughput=118.0,
    goodput=110.0,
    p99=0.09,
    failed=0,
    mean_batch=4.0,
    batch_seconds=0.02,
    busy_ratio=0.5,
    queue_depth=2,
    lanes=1,
    oom=0,
    pool_hits=0,
    pool_misses=0,
)


def collect(view: GuardView, performance: Measurement | None) -> dict[tuple[str, tuple[str, ...]], float]:
    collector = TunerCollector(lambda: view, lambda: ["max_batch_size", "streams"], lambda: 0.1, lambda: performance)
    return {(s.spec.name, s.labels): s.value for s in collector.collect(WorkerTarget()).samples}


def test_every_knob_and_action_is_counted_from_zero_so_the_first_decision_shows_in_increase():
    view = GuardView("auto", "trial", True, [], [], {("streams", "apply"): 2})
    samples = collect(view, MEASURED)
    decisions = {labels: value for (name, labels), value in samples.items() if name == "gputuned_tuner_decisions_total"}
    assert decisions[("streams", "apply")] == 2
    assert decisions[("max_batch_size", "revert")] == 0 and decisions[("*", "shift")] == 0
    assert len(decisions) == 2 * 5 + 1
    assert samples[("gputuned_tuner_slo_p99_seconds", ())] == 0.1
    assert samples[("gputuned_tuner_goodput_requests_per_second", ())] == 110.0
    assert samples[("gputuned_tuner_trial_active", ())] == 1


def test_no_goodput_before_the_worker_has_reported():
    samples = collect(GuardView("recommend", "baseline", False, [], [], {}), None)
    assert ("gputuned_tuner_goodput_requests_per_second", ()) not in samples
    assert samples[("gputuned_tuner_mode", ("recommend",))] == 1
