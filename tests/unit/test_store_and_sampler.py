"""The sample store's windows and the sampler's containment and log-once behaviour."""

from __future__ import annotations

import logging

import pytest

from gputuned.collectors.worker import WorkerCollector
from gputuned.daemon.supervisor import WorkerState, WorkerStatus
from gputuned.performance import GenerativeObjectives
from gputuned.sampler import Sampler
from gputuned.samples import Collected, MetricSpec, WorkerTarget
from gputuned.store import Ring, SampleStore, Snapshot

SPEC = MetricSpec("gputuned_test_value", "gauge", "test", ("gpu",))


def test_ring_keeps_the_newest_points_oldest_first():
    ring = Ring(3)
    for i in range(5):
        ring.append(float(i), i * 10.0)
    assert ring.points() == [(2.0, 20.0), (3.0, 30.0), (4.0, 40.0)]


def test_ring_rejects_zero_capacity():
    with pytest.raises(ValueError):
        Ring(0)


def test_store_windows_are_bounded_per_series():
    store = SampleStore(window=4)
    for t in range(10):
        collected = Collected()
        collected.add(SPEC, t, "0")
        collected.add(SPEC, -t, "1")
        store.publish(Snapshot("c", tuple(collected.samples), True, 0.0, float(t)))
    assert store.window("gputuned_test_value", ("0",)) == [(6.0, 6.0), (7.0, 7.0), (8.0, 8.0), (9.0, 9.0)]
    assert store.window("gputuned_test_value", ("1",))[-1] == (9.0, -9.0)
    assert store.window("gputuned_missing") == []
    assert [s.collector for s in store.snapshots()] == ["c"]


class ScriptedCollector:
    """A collector whose outputs are scripted per tick."""

    def __init__(self, name, script):
        self.name = name
        self._script = iter(script)
        self.closed = False
        self.targets = []

    def collect(self, target):
        self.targets.append(target)
        result = next(self._script)
        if isinstance(result, Exception):
            raise result
        return result

    def close(self):
        self.closed = True


def test_a_crashing_collector_fails_alone_and_the_others_still_publish():
    good = Collected()
    good.add(SPEC, 1, "0")
    crashing = ScriptedCollector("bad", [RuntimeError("boom")])
    fine = ScriptedCollector("good", [good])
    store = SampleStore(10)
    target = WorkerTarget(pid=7)
    sampler = Sampler([crashing, fine], store, lambda: target)
    sampler.tick()
    snapshots = {s.collector: s for s in store.snapshots()}
    assert snapshots["bad"].success is False and snapshots["bad"].samples == ()
    assert snapshots["good"].success is True and len(snapshots["good"].samples) == 1
    assert crashing.targets == [target] and fine.targets == [target]
    assert store.last_round_at() is not None
    sampler.close()
    assert crashing.closed and fine.closed


def test_errors_are_logged_once_and_their_recovery_once(caplog):
    failing = Collected(errors=["cannot read /proc/vmstat"], notes=["no NUMA"])
    ok = Collected(notes=["no NUMA"])
    collector = ScriptedCollector("numa", [failing, failing, failing, ok, ok])
    sampler = Sampler([collector], SampleStore(10), WorkerTarget)
    with caplog.at_level(logging.INFO, logger="gputuned.sampler"):
        for _ in range(5):
            sampler.tick()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "collector numa: cannot read /proc/vmstat",
        "collector numa: no NUMA",
        "collector numa recovered from: cannot read /proc/vmstat",
    ]


def test_a_crash_traceback_is_logged_once(caplog):
    collector = ScriptedCollector("nvml", [RuntimeError("boom")] * 3)
    sampler = Sampler([collector], SampleStore(10), WorkerTarget)
    with caplog.at_level(logging.INFO, logger="gputuned.sampler"):
        for _ in range(3):
            sampler.tick()
    assert sum(1 for r in caplog.records if r.exc_info) == 1


def test_a_counter_rate_over_a_window_and_none_where_it_cannot_be_told():
    counter = MetricSpec("gputuned_test_joules_total", "counter", "test", ("gpu",))
    store = SampleStore(window=60)
    for t, joules in ((10.0, 1000.0), (11.0, 1300.0), (12.0, 1500.0), (13.0, 1800.0), (14.0, 5.0)):
        collected = Collected()
        collected.add(counter, joules, "0")
        store.publish(Snapshot("c", tuple(collected.samples), True, 0.0, t))
    assert store.rate("gputuned_test_joules_total", ("0",), 10.0, 13.0) == pytest.approx(800.0 / 3)
    assert store.rate("gputuned_test_joules_total", ("0",), 11.5, 12.5) is None  # one point
    assert store.rate("gputuned_test_joules_total", ("0",), 12.0, 14.0) is None  # the counter was reset
    assert store.rate("gputuned_test_joules_total", ("1",), 10.0, 14.0) is None


class SilentWorker:
    """A ready worker whose last stats arrived at t=0 (the SupervisedWorker protocol)."""

    name, gpu = "w", None

    def status(self) -> WorkerStatus:
        return WorkerStatus(WorkerState.READY, 1234, 0, None, 0.0, None, {}, {}, 0.0, None, "")

    def slo_seconds(self) -> float:
        return 0.1

    def generative_objectives(self) -> GenerativeObjectives:
        return GenerativeObjectives(1.0, 0.1)


def test_a_worker_silent_for_longer_and_longer_is_logged_once(caplog):
    clock = iter([1.0, 10.0, 11.0, 12.0, 13.0])
    sampler = Sampler([WorkerCollector(lambda: [SilentWorker()], clock=lambda: next(clock))], SampleStore(10), WorkerTarget)
    with caplog.at_level(logging.INFO, logger="gputuned.sampler"):
        for _ in range(5):
            sampler.tick()
    assert [r.getMessage() for r in caplog.records] == ["collector worker: no stats from worker w for over 5 s"]
