"""The tuning loop of a slot, on a simulated worker and a hand-driven monotonic clock.

The real TuningLoop, Guard, tuners, StatsHistory and window arithmetic run; only the
worker is simulated: it turns its knobs into cumulative stats reports the way the real
worker streams them, stamped with the same monotonic clock the loop reads. No threads,
sockets or sleeps.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest

from gputuned.config import TuningConfig
from gputuned.control.histogram import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_SECONDS, Histogram
from gputuned.daemon.history import StatsHistory
from gputuned.daemon.supervisor import WorkerState, WorkerStatus
from gputuned.daemon.tuning import TuningLoop, tuning_context
from gputuned.performance import DeviceReadings
from tests.helpers import ManualClock

TICK = 0.5
HELLO = {
    "worker": {"pid": 7, "model": "sim", "device": "cpu", "input": {"shape": [3, 8, 8], "dtype": "FP32"}},
    "knobs": {
        "max_batch_size": {"type": "int", "value": 1, "min": 1, "max": 64, "live": True},
        "streams": {"type": "int", "value": 1, "min": 1, "max": 1, "live": True},
    },
}


class SimulatedWorker:
    """Serves 100 requests/s per item of batch (up to 8), each in 20 ms, plus a flood of
    `rejected_per_second` malformed requests (the clients' mistakes) when set."""

    def __init__(self, clock: ManualClock, history: StatsHistory) -> None:
        self.clock = clock
        self.history = history
        self.knobs = {"max_batch_size": 1, "streams": 1}
        self.rejected_per_second = 0.0
        self.counters = {"requests": 0.0, "completed": 0.0, "rejected": 0.0, "batches": 0.0, "lane_busy_seconds": 0.0}
        self.latency = Histogram(LATENCY_BUCKETS_SECONDS)
        self.batch_size = Histogram(BATCH_SIZE_BUCKETS)
        self.sets: list[dict[str, int]] = []

    def advance(self) -> None:
        """One tick of serving, then a stats report, as the real worker streams every 0.5 s."""
        batch = self.knobs["max_batch_size"]
        served = int(100 * min(batch, 8) * TICK)
        rejected = int(self.rejected_per_second * TICK)
        self.counters["requests"] += served + rejected
        self.counters["completed"] += served
        self.counters["rejected"] += rejected
        self.counters["batches"] += served / batch
        self.counters["lane_busy_seconds"] += TICK
        self.latency.observe(0.02, served)
        self.batch_size.observe(batch, int(served / batch))
        self.clock.advance(TICK)
        stats: dict[str, Any] = {**self.counters, "failed": 0, "refused": 0, "oom": 0, "pool_hits": 0, "pool_misses": 0}
        stats |= {
            "queue_depth": 0,
            "lanes": 1,
            "latency_seconds": self.latency.snapshot(),
            "batch_size": self.batch_size.snapshot(),
        }
        self.history.append(self.clock(), stats)

    # --- what the tuning loop asks of the supervisor -------------------------------------------

    def status(self) -> WorkerStatus:
        return WorkerStatus(WorkerState.READY, 7, 0, None, 0.0, HELLO, dict(self.knobs), None, None, None, "serving")

    def set_knobs(self, changes: dict[str, int], persist: bool = True) -> dict[str, int]:
        self.sets.append(changes)
        self.knobs.update(changes)
        return dict(changes)


class JumpingWallClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return 1_800_000_000.0 + self.offset


def run_loop(seconds: float, tuning: TuningConfig | None = None, jump_after_apply: float | None = None, flood: float = 0.0):
    clock, wall = ManualClock(100.0), JumpingWallClock()
    history = StatsHistory()
    worker = SimulatedWorker(clock, history)
    decisions: list = []

    def record(decision: Any) -> None:
        decisions.append(decision)
        if jump_after_apply is not None and decision.action == "apply" and wall.offset == 0.0:
            wall.offset = jump_after_apply  # the wall clock jumps in the middle of this trial
        if decision.action == "apply":
            worker.rejected_per_second = flood  # malformed requests flood in during the trial

    loop = TuningLoop(
        tuning or TuningConfig(mode="auto"),
        worker,
        history.between,
        lambda start, end: DeviceReadings(busy=0.5),
        lambda: None,
        record,
        clock,
        wall,
    )
    for _ in range(int(seconds / TICK)):
        worker.advance()
        loop.step()
    return loop, worker, decisions


def summary(decisions: list) -> list[tuple]:
    return [(d.action, d.knob, d.old, d.new) for d in decisions]


def test_the_loop_keeps_a_better_batch_size():
    _, worker, decisions = run_loop(20)
    assert ("keep", "max_batch_size", 1, 2) in summary(decisions)
    assert worker.knobs["max_batch_size"] >= 2


def test_a_wall_clock_jump_during_a_trial_changes_no_decision():
    _, _, steady = run_loop(30)
    _, _, jumped_back = run_loop(30, jump_after_apply=-3600.0)
    _, _, jumped_ahead = run_loop(30, jump_after_apply=+86400.0)
    assert summary(steady) == summary(jumped_back) == summary(jumped_ahead)
    # The wall clock only stamps them: the decisions after the jump carry the jumped time.
    assert jumped_back[0].t - jumped_back[-1].t > 3000
    assert jumped_ahead[-1].t - jumped_ahead[0].t > 80000


def test_a_flood_of_client_mistakes_during_a_trial_does_not_revert_a_good_change():
    _, _, decisions = run_loop(20, flood=2000.0)  # ten malformed requests for every good one
    actions = summary(decisions)
    assert ("keep", "max_batch_size", 1, 2) in actions, actions
    assert not any(d.action == "revert" for d in decisions), [d.reason for d in decisions]


def test_a_reloaded_tuning_section_applies_whole_at_the_next_step():
    loop, worker, decisions = run_loop(6.5)
    assert decisions[-1].action == "apply", "the change is on trial"
    on_trial = dict(worker.knobs)
    strict = dataclasses.replace(TuningConfig(mode="auto"), slo_p99_ms=10.0, trial_seconds=5.0, mode="recommend")
    loop.reconfigure(strict)
    assert loop.slo_seconds == 0.1, "nothing changes until the tuning job's next step"
    worker.advance()
    loop.step()
    assert loop.slo_seconds == 0.01
    assert loop.guard.settings.trial_seconds == 5.0
    assert loop.guard.mode.value == "recommend"
    assert decisions[-1].action == "revert" and "reloaded" in decisions[-1].reason
    assert worker.knobs != on_trial
    # The goodput the metrics export is measured against the same new SLO: 20 ms requests miss 10 ms.
    for _ in range(4):
        worker.advance()
    recent = loop.recent()
    assert recent is not None and recent.throughput > 0 and recent.goodput == 0.0


def test_an_unchanged_reload_leaves_a_trial_alone():
    loop, worker, decisions = run_loop(6.5)
    count = len(decisions)
    loop.reconfigure(TuningConfig(mode="auto"))
    worker.advance()
    loop.step()
    assert not any(d.action == "revert" for d in decisions[count:])


def test_tuning_context_from_a_hello():
    context = tuning_context(HELLO, {"max_batch_size": 4, "streams": 1}, cores=2)
    assert context.bounds == {"max_batch_size": (1, 64), "streams": (1, 1)}
    assert context.device == "cpu" and context.cores == 2
    assert context.item_bytes == 3 * 8 * 8 * 4
    cuda = {**HELLO, "worker": {**HELLO["worker"], "device": "cuda:1", "input": {"shape": [16], "dtype": "FP16"}}}
    assert tuning_context(cuda, {}, cores=8).device == "cuda"
    assert tuning_context(cuda, {}, cores=8).item_bytes == 32


def test_finishing_puts_a_change_on_trial_back_and_no_step_runs_after():
    loop, worker, decisions = run_loop(20)
    for _ in range(40):  # run until a change is on trial
        if loop.guard.view().trial_active:
            break
        worker.advance()
        loop.step()
    assert loop.guard.view().trial_active
    applied = decisions[-1]
    assert applied.action == "apply" and worker.knobs[applied.knob] == applied.new
    loop.finish("the daemon is stopping")
    reverted = decisions[-1]
    assert (reverted.action, reverted.knob, reverted.new) == ("revert", applied.knob, applied.old)
    assert "the daemon is stopping" in reverted.reason and worker.knobs[applied.knob] == applied.old
    sets, count = len(worker.sets), len(decisions)
    for _ in range(20):
        worker.advance()
        loop.step()
    assert len(worker.sets) == sets and len(decisions) == count and not loop.guard.view().trial_active


@pytest.mark.integration  # threads
def test_finishing_waits_for_a_set_in_flight_before_reverting_it():
    loop, worker, decisions = run_loop(20)
    entered, release = threading.Event(), threading.Event()
    plain_set = worker.set_knobs

    def slow_set(changes: dict[str, int], persist: bool = True) -> dict[str, int]:
        entered.set()
        release.wait(10)  # a Triton reload takes seconds
        return plain_set(changes, persist)

    worker.set_knobs = slow_set  # type: ignore[method-assign]

    def tune() -> None:
        for _ in range(40):
            if entered.is_set():
                return
            worker.advance()
            loop.step()

    stepping = threading.Thread(target=tune)
    stepping.start()
    assert entered.wait(10), "no change was tried"
    finishing = threading.Thread(target=loop.finish, args=("the daemon is stopping",))
    finishing.start()
    time.sleep(0.2)
    assert finishing.is_alive()  # waits for the set in flight
    release.set()
    finishing.join(10)
    stepping.join(10)
    assert [d.action for d in decisions[-2:]] == ["apply", "revert"]
    assert worker.knobs[decisions[-1].knob] == decisions[-1].new  # the accepted value, in force
