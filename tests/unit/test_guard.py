"""The guard on a simulated worker: converges, reverts harm, obeys bounds, modes and budgets.

The simulated worker answers `measure(start, end)` from a known landscape of goodput and
p99 over the knobs (with seeded noise), so the guard runs through hundreds of decisions
in simulated time without sleeping.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace

import pytest

from gputuned.performance import Measurement
from gputuned.tuners import default_tuners
from gputuned.tuners.base import Proposal
from gputuned.tuners.batch import BatchDownProbe, BatchJumpTuner, BatchTuner
from gputuned.tuners.guard import Context, Guard, GuardSettings
from gputuned.tuners.mode import Mode
from gputuned.tuners.streams import StreamsTuner
from gputuned.tuners.threads import ThreadsTuner
from tests.helpers import builtin_bounds

SLO = 0.1
BOUNDS = builtin_bounds()
DEFAULTS = {"max_batch_size": 1, "max_queue_delay_us": 0, "streams": 1, "pool_mb": 0, "intra_op_threads": 2}


CLIENTS = 32


class SimulatedWorker:
    """Throughput grows with batch size and a second lane (if the cores are not oversubscribed);
    p99 grows with batch size, so the SLO caps the batch. Closed loop: batches come out full,
    and the requests in the worker are the clients (32 x demand) whatever the settings."""

    def __init__(self, noise: float = 0.02, seed: int = 1, demand: float = 1.0) -> None:
        self.knobs = dict(DEFAULTS)
        self.applied: list[dict[str, int]] = []
        self.rng = random.Random(seed)
        self.noise = noise
        self.demand = demand
        self.oom_above: int | None = None
        self.items_per_request = 1.0

    def performance(self, knobs: dict[str, int]) -> tuple[float, float]:
        batch, lanes, threads = knobs["max_batch_size"], knobs["streams"], knobs["intra_op_threads"]
        cores_used = lanes * threads
        parallel = (1 + 0.3 * (lanes - 1)) if cores_used <= 2 else 0.8
        thread_gain = 1.1 if threads == 2 and lanes == 1 else 1.0
        throughput = 400 * (1 - 0.6 / batch**0.5) * parallel * thread_gain * self.demand / 0.4
        p99 = 0.01 + 0.002 * batch / (1 + 0.3 * (lanes - 1))
        return throughput, p99

    def apply(self, changes: dict[str, int]) -> dict[str, int]:
        self.knobs.update(changes)
        self.applied.append(dict(changes))
        return dict(changes)

    def measure(self, start: float, end: float) -> Measurement | None:
        if end - start <= 0:
            return None
        throughput, p99 = self.performance(self.knobs)
        throughput *= 1 + self.rng.uniform(-self.noise, self.noise)
        oom = 1 if self.oom_above is not None and self.knobs["max_batch_size"] > self.oom_above else 0
        goodput = throughput if p99 <= SLO else throughput * 0.3
        return Measurement(
            seconds=end - start,
            arrival_rate=throughput,
            throughput=throughput,
            goodput=goodput,
            p99=p99,
            failed=0,
            mean_batch=self.knobs["max_batch_size"],
            batch_seconds=p99 / 2,
            busy_ratio=0.95,
            queue_depth=3,
            lanes=self.knobs["streams"],
            oom=oom,
            pool_hits=0,
            pool_misses=0,
            in_system=CLIENTS * self.demand,
            items_per_request=self.items_per_request,
        )

    def context(self) -> Context:
        return Context(dict(self.knobs), BOUNDS, "cpu", 2, 3 * 64 * 64 * 4)


def run(guard: Guard, seconds: float, start: float = 0.0, tick: float = 0.5) -> float:
    now = start
    while now < start + seconds:
        guard.step(now)
        now += tick
    return now


def make(worker: SimulatedWorker, mode: Mode = Mode.AUTO, tuners=None, clock=None, **settings) -> tuple[Guard, list]:
    decisions: list = []
    guard = Guard(
        GuardSettings(slo_seconds=SLO, **settings),
        tuners or default_tuners(),
        worker.context,
        worker.measure,
        worker.apply,
        decisions.append,
        mode,
        clock=clock,
    )
    return guard, decisions


def best_goodput(worker: SimulatedWorker) -> float:
    best = 0.0
    for batch, lanes, threads in itertools.product([2**i for i in range(10)], range(1, 5), (1, 2)):
        throughput, p99 = worker.performance({"max_batch_size": batch, "streams": lanes, "intra_op_threads": threads})
        if p99 <= SLO:
            best = max(best, throughput)
    return best


def test_converges_near_the_best_setting_within_the_slo():
    worker = SimulatedWorker()
    guard, decisions = make(worker)
    run(guard, 180)
    throughput, p99 = worker.performance(worker.knobs)
    assert p99 <= SLO
    assert throughput >= 0.95 * best_goodput(worker), (worker.knobs, decisions[-5:])
    actions = {d.action for d in decisions}
    assert {"apply", "keep", "revert"} <= actions
    assert "shift" not in actions  # a closed loop's arrival rate rose 4x with the settings: our doing, not a shift
    assert all(d.baseline is not None for d in decisions if d.action in ("keep", "revert"))


class LanesShrinkTheBestBatch(SimulatedWorker):
    """As on this 2-core machine: one lane climbs to batch 16 (no gain beyond), but with two
    lanes (a core each, half the cache) batch 8 beats 16. An up-only climb stays at 16."""

    two_lanes_at_16 = 0.85  # batch 16's share of its goodput at one lane (8 serves 9% more than 16)

    def performance(self, knobs: dict[str, int]) -> tuple[float, float]:
        batch, lanes, threads = knobs["max_batch_size"], knobs["streams"], knobs["intra_op_threads"]
        throughput = 400 * (1 - 0.6 / min(batch, 16) ** 0.5)
        if lanes * threads > 2:
            throughput *= 0.8
        elif lanes == 2:
            throughput *= 1.4 * (1.0 if batch <= 8 else self.two_lanes_at_16 if batch == 16 else 0.7)
        else:
            throughput *= 1.1 if threads == 2 else 1.0
        return throughput, 0.01 + 0.002 * batch / (1 + 0.3 * (lanes - 1))


def test_the_batch_is_probed_down_once_the_climb_stops_and_the_landscape_moved():
    worker = LanesShrinkTheBestBatch()
    # Without the queue-delay and pool tuners: a keep of theirs would (rightly) let the batch retry 16.
    guard, decisions = make(worker, tuners=[BatchTuner(), ThreadsTuner(), StreamsTuner(), BatchDownProbe()])
    run(guard, 180)
    assert (worker.knobs["max_batch_size"], worker.knobs["streams"]) == (8, 2), decisions
    kept = [(d.knob, d.old, d.new) for d in decisions if d.action == "keep"]
    assert ("max_batch_size", 16, 8) in kept
    # Neither undone (16 again after 8 beat it) nor probed twice at the same place (32 is
    # tried twice: once per lane count).
    batch_trials = [(d.old, d.new) for d in decisions if d.action == "apply" and d.knob == "max_batch_size"]
    assert (8, 16) not in batch_trials[batch_trials.index((16, 8)) :]
    assert batch_trials.count((16, 8)) == 1 and batch_trials.count((8, 4)) == 1


def test_with_every_tuner_the_batch_is_probed_down_as_soon_as_a_lane_is_added():
    # Asked last, the probe would wait behind the queue delay and the pool; on the encoder
    # here those trials took the whole tuning time and the worker stayed at batch 16.
    worker = LanesShrinkTheBestBatch()
    guard, decisions = make(worker)
    run(guard, 180)
    lane_added = next(i for i, d in enumerate(decisions) if d.action == "keep" and d.knob == "streams")
    after = decisions[lane_added:]
    probed = next(i for i, d in enumerate(after) if d.action == "apply" and (d.knob, d.old, d.new) == ("max_batch_size", 16, 8))
    between = {d.knob for d in after[:probed] if d.action == "apply"}
    assert between <= {"max_batch_size"}, decisions
    assert (worker.knobs["max_batch_size"], worker.knobs["streams"]) == (8, 2), decisions


class SmallerIsSlightlyBetter(LanesShrinkTheBestBatch):
    """As resnet-mini here: with two lanes batch 8 serves 2% more than 16, under the 3% margin."""

    two_lanes_at_16 = 0.91  # 8 serves 2% more than 16


def test_the_probe_down_wins_a_tie_that_an_explore_margin_would_lose():
    worker = SmallerIsSlightlyBetter(noise=0.0)
    guard, decisions = make(worker)
    run(guard, 180)
    assert (worker.knobs["max_batch_size"], worker.knobs["streams"]) == (8, 2), decisions
    # Half again (4, 11% below 8) is tried and falls: a tie-winning move still has to hold goodput.
    judged = [(d.action, d.old, d.new) for d in decisions if d.knob == "max_batch_size" and d.action in ("keep", "revert")]
    assert judged[judged.index(("keep", 16, 8)) + 1 :] == [("revert", 4, 8)]


def test_a_harmful_change_is_reverted_and_not_retried_while_nothing_else_changes():
    worker = SimulatedWorker(noise=0.0, demand=3.0)  # 96 clients: 64 wait behind a batch of 32
    worker.knobs["max_batch_size"] = 32  # doubling to 64 breaks the SLO (p99 138 ms)
    worker.knobs["streams"] = 1
    guard, decisions = make(worker, tuners=[BatchTuner()])
    run(guard, 60)
    reverts = [d for d in decisions if d.action == "revert" and d.knob == "max_batch_size"]
    assert len(reverts) == 1 and reverts[0].old == 64 and reverts[0].new == 32
    assert "SLO" in reverts[0].reason or "harmful" in reverts[0].reason
    assert worker.knobs["max_batch_size"] == 32
    assert sum(1 for change in worker.applied if change == {"max_batch_size": 64}) == 1


class Trough(SimulatedWorker):
    """One core, 8 clients: batch 2 serves 10% less than batch 1, batch 8 (all of them) 20% more."""

    def performance(self, knobs: dict[str, int]) -> tuple[float, float]:
        gain = {1: 1.0, 2: 0.9, 4: 1.05}.get(knobs["max_batch_size"], 1.2)
        return 300 * gain, 0.02

    def measure(self, start: float, end: float) -> Measurement | None:
        window = super().measure(start, end)
        return None if window is None else replace(window, in_system=7.5, mean_batch=min(self.knobs["max_batch_size"], 7.5))


def test_the_climb_jumps_past_a_doubling_that_did_not_pay_when_more_requests_wait():
    worker = Trough(noise=0.0)
    worker.knobs["intra_op_threads"] = 1
    guard, decisions = make(worker, tuners=[BatchTuner(), BatchJumpTuner()])
    run(guard, 60)
    trials = [(d.action, d.old, d.new) for d in decisions if d.knob == "max_batch_size" and d.action in ("keep", "revert")]
    assert trials[:2] == [("revert", 2, 1), ("keep", 1, 8)], decisions
    assert worker.knobs["max_batch_size"] == 8


class NoTrough(Trough):
    """As Trough, but the whole queue at once serves no more than batch 1 either."""

    def performance(self, knobs: dict[str, int]) -> tuple[float, float]:
        return 300 * (1.0 if knobs["max_batch_size"] == 1 else 0.9), 0.02


def test_a_jump_past_a_step_that_did_not_pay_is_tried_once():
    # The trial keeps the proposal's `past` mark: its revert refuses the jump, not the step
    # (already refused), so the jump is not proposed and tried again at every baseline.
    worker = NoTrough(noise=0.0)
    worker.knobs["intra_op_threads"] = 1
    guard, decisions = make(worker, tuners=[BatchTuner(), BatchJumpTuner()], flap_reverts=10)
    run(guard, 120)
    tried = [(d.old, d.new) for d in decisions if d.action == "apply" and d.knob == "max_batch_size"]
    assert tried == [(1, 2), (1, 8)], decisions
    assert worker.knobs["max_batch_size"] == 1


class LanesNotBatches(NoTrough):
    """As Triton's Python backend here (bench/triton_online.py): 16 clients, the lanes saturated;
    batch 2 or 8 on one instance serves less than batch 1, a second instance 1.7x."""

    def performance(self, knobs: dict[str, int]) -> tuple[float, float]:
        lanes = 1.7 if knobs["streams"] >= 2 else 1.0
        return super().performance(knobs)[0] * lanes, 0.02


def test_a_saturated_lane_is_doubled_before_the_batch_jumps_past_a_step_that_did_not_pay():
    # Every trial on Triton is a model reload (~9 s here): the jump tried first (and once
    # more, before the trial kept its past mark) left no time for the instance in 70 s.
    worker = LanesNotBatches(noise=0.0)  # both cores to its one lane
    guard, decisions = make(worker)
    run(guard, 30)
    tried = [(d.knob, d.old, d.new) for d in decisions if d.action == "apply"]
    assert tried[:2] == [("max_batch_size", 1, 2), ("streams", 1, 2)], decisions
    assert worker.knobs["streams"] == 2


def test_bounds_are_obeyed():
    worker = SimulatedWorker()
    bounded = {**BOUNDS, "max_batch_size": (1, 8), "streams": (1, 1)}
    worker.context = lambda: Context(dict(worker.knobs), bounded, "cpu", 2, 1)  # type: ignore[method-assign]
    guard, _ = make(worker)
    run(guard, 120)
    assert all(change.get("max_batch_size", 0) <= 8 for change in worker.applied)
    assert all(change.get("streams", 1) == 1 for change in worker.applied)


class AlwaysWorse:
    """A tuner that keeps proposing new harmful values of one knob."""

    name = "always_worse"

    def __init__(self) -> None:
        self.counter = itertools.count(2)

    def propose(self, inp):
        return Proposal("max_queue_delay_us", next(self.counter) * 1000, "test")


def test_the_flap_budget_stops_a_knob_that_keeps_being_reverted():
    # Each kept batch change lets the useless queue-delay proposal be tried again; after
    # three reverts the flap budget leaves that knob alone for the flap window.
    worker = SimulatedWorker(noise=0.0)
    guard, decisions = make(worker, tuners=[AlwaysWorse(), BatchTuner()], flap_reverts=3, flap_window=1000.0)
    run(guard, 300)
    reverts = [d for d in decisions if d.action == "revert" and d.knob == "max_queue_delay_us"]
    assert len(reverts) == 3
    assert sum(1 for d in decisions if d.action == "keep" and d.knob == "max_batch_size") >= 4


def test_each_change_waits_for_warmup_trial_and_cooldown_unless_it_does_harm():
    worker = SimulatedWorker(noise=0.0)
    guard, decisions = make(worker, baseline_seconds=3, warmup_seconds=2, trial_seconds=4, cooldown_seconds=1)
    taken_at: list[float] = []  # the step time of each decision (Decision.t is the wall clock)
    for tick in range(180):
        guard.step(tick * 0.5)
        taken_at += [tick * 0.5] * (len(decisions) - len(taken_at))
    stamped = list(zip(decisions, taken_at))
    judged = [(apply, end) for apply, end in itertools.pairwise(stamped) if apply[0].action == "apply"]
    assert judged
    for (_, applied_at), (end, ended_at) in judged:
        if "harmful" in end.reason:
            assert ended_at - applied_at < 2 + 4  # harm is reverted without waiting for the trial
        else:
            assert ended_at - applied_at >= 2 + 4
    for (end, ended_at), (following, following_at) in itertools.pairwise(stamped):
        if end.action in ("keep", "revert") and following.action == "apply":
            assert following_at - ended_at >= 1  # the cooldown


def test_windows_stretch_to_span_several_requests_of_a_slow_worker():
    """Requests of 2 s (median latency, an LLM's): a 3 s window would judge mostly requests
    begun before the change, so the trial stretches to 5 x 2 s."""

    class Slow(SimulatedWorker):
        def measure(self, start: float, end: float) -> Measurement | None:
            window = super().measure(start, end)
            return None if window is None else replace(window, p50=2.0)

    worker = Slow(noise=0.0)
    guard, decisions = make(worker, baseline_seconds=3, warmup_seconds=1, trial_seconds=3, cooldown_seconds=1)
    taken_at: list[float] = []
    for tick in range(400):
        guard.step(tick * 0.5)
        taken_at += [tick * 0.5] * (len(decisions) - len(taken_at))
    stamped = list(zip(decisions, taken_at))
    judged = [(a, b) for a, b in itertools.pairwise(stamped) if a[0].action == "apply" and "harmful" not in b[0].reason]
    assert judged
    assert all(ended_at - applied_at >= 1 + 10 for (_, applied_at), (_, ended_at) in judged)


def test_recommend_mode_changes_nothing_and_says_what_it_would_do():
    worker = SimulatedWorker()
    guard, decisions = make(worker, Mode.RECOMMEND)
    run(guard, 60)
    assert worker.applied == []
    assert decisions and all(d.action == "recommend" for d in decisions)
    assert len({(d.knob, d.new) for d in decisions}) == len(decisions)  # each said once


def test_frozen_mode_and_frozen_knobs():
    worker = SimulatedWorker()
    guard, decisions = make(worker, Mode.FROZEN)
    run(guard, 60)
    assert worker.applied == [] and decisions == []
    guard.set_mode(Mode.AUTO)
    guard.freeze(["max_batch_size"])
    run(guard, 60, start=60)
    assert worker.applied and all("max_batch_size" not in change for change in worker.applied)
    guard.resume()
    run(guard, 60, start=120)
    assert any("max_batch_size" in change for change in worker.applied)


@pytest.mark.parametrize("mode", [Mode.FROZEN, Mode.RECOMMEND])
def test_a_trial_in_flight_is_reverted_when_the_mode_leaves_auto_and_nothing_moves_after(mode):
    worker = SimulatedWorker()
    guard, decisions = make(worker)
    now = 0.0
    while not guard.view().trial_active and now < 60:
        guard.step(now)
        now += 0.5
    assert guard.view().trial_active, "a change went on trial"
    trial = decisions[-1]
    guard.set_mode(mode)
    guard.step(now)
    assert (decisions[-1].action, decisions[-1].knob, decisions[-1].new) == ("revert", trial.knob, trial.old)
    assert worker.knobs[trial.knob] == trial.old and not guard.view().trial_active
    applied = len(worker.applied)
    run(guard, 60, start=now + 0.5)
    assert len(worker.applied) == applied, f"{mode.value}: no change after the mode left auto"
    if mode is Mode.FROZEN:  # (recommend mode says each move once, then refuses it)
        guard.set_mode(Mode.AUTO)
        run(guard, 60, start=now + 61)
        retried = worker.applied[applied]
        assert retried.get(trial.knob) == trial.new, f"an abandoned trial's direction is not refused: {retried}"


def test_out_of_memory_halves_the_batch_and_remembers_the_ceiling():
    worker = SimulatedWorker(noise=0.0)
    worker.knobs["max_batch_size"] = 16
    worker.oom_above = 8
    guard, _decisions = make(worker, tuners=[BatchTuner()])
    run(guard, 120)
    assert worker.knobs["max_batch_size"] <= 8
    assert guard.view().ceilings["max_batch_size"] == 15
    assert not any(change.get("max_batch_size", 0) > 15 for change in worker.applied)


def test_a_trial_that_runs_out_of_memory_sets_a_ceiling_that_outlives_a_shift():
    worker = SimulatedWorker(noise=0.0)
    worker.knobs["max_batch_size"] = 8
    worker.oom_above = 8  # the climb's next step, 16, runs out of memory
    guard, decisions = make(worker, tuners=[BatchTuner()])
    now = run(guard, 30)
    assert ("revert", 16, 8) in [(d.action, d.old, d.new) for d in decisions]
    assert guard.view().ceilings["max_batch_size"] == 15
    guard.restart_exploration(now)  # forgets refused directions, not what ran out of memory
    run(guard, 60, start=now)
    assert [change for change in worker.applied if change.get("max_batch_size", 0) > 15] == [{"max_batch_size": 16}]


def test_a_workload_shift_restarts_exploration():
    worker = SimulatedWorker(noise=0.0)
    guard, decisions = make(worker)
    now = run(guard, 120)
    worker.demand = 0.3  # a third of the traffic
    run(guard, 60, start=now)
    shifts = [d for d in decisions if d.action == "shift"]
    assert len(shifts) == 1 and "exploring again" in shifts[0].reason


def test_bigger_inputs_are_a_shift_even_at_the_same_arrival_rate():
    worker = SimulatedWorker(noise=0.0)
    guard, decisions = make(worker)
    now = run(guard, 120)
    worker.items_per_request = 4.0  # same clients, same rates in the simulation: only the input grew
    run(guard, 30, start=now)
    shifts = [d for d in decisions if d.action == "shift"]
    assert len(shifts) == 1 and "items per request 1.0 -> 4.0" in shifts[0].reason


class OpenLoop(SimulatedWorker):
    """Requests arrive at a fixed rate whatever the settings; the settings change how long
    they stay, so the requests in the worker move with them."""

    def __init__(self, rate: float) -> None:
        super().__init__(noise=0.0)
        self.rate = rate

    def measure(self, start: float, end: float) -> Measurement | None:
        window = super().measure(start, end)
        if window is None:
            return None
        _, p99 = self.performance(self.knobs)
        return replace(window, arrival_rate=self.rate, in_system=self.rate * p99 / 2)


def test_open_loop_traffic_shifts_when_its_rate_does_not_when_the_settings_move_latency():
    worker = OpenLoop(rate=3000)  # more than it serves: a deep queue, from which full batches come
    guard, decisions = make(worker)
    now = run(guard, 120)
    assert len({d.new for d in decisions if d.knob == "max_batch_size" and d.action == "keep"}) >= 3
    assert not [d for d in decisions if d.action == "shift"]  # requests in the worker moved 4x, arrivals did not
    worker.rate = 750
    run(guard, 30, start=now)
    shifts = [d for d in decisions if d.action == "shift"]
    assert len(shifts) == 1 and "3000 -> 750 req/s" in shifts[0].reason


def test_a_refused_change_is_recorded_and_not_retried():
    worker = SimulatedWorker()

    def refuse(changes):
        raise RuntimeError("worker not connected")

    decisions: list = []
    guard = Guard(GuardSettings(slo_seconds=SLO), default_tuners(), worker.context, worker.measure, refuse, decisions.append)
    run(guard, 30)
    refusals = [d for d in decisions if d.action == "refuse"]
    assert refusals and "worker not connected" in refusals[0].reason
    assert len({(d.knob, d.new) for d in refusals}) == len(refusals)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_convergence_holds_across_noise_seeds(seed):
    worker = SimulatedWorker(noise=0.04, seed=seed)
    guard, _ = make(worker)
    run(guard, 240)
    throughput, p99 = worker.performance(worker.knobs)
    assert p99 <= SLO and throughput >= 0.9 * best_goodput(worker), worker.knobs


class Plateau(SimulatedWorker):
    """Near the optimum: batch 16 serves `gain` more (or less) than batch 8. As on this
    machine, each window is off by up to +-12% and the machine's speed drifts by 30% (a
    minute's swing, from a phase of its own per seed)."""

    def __init__(self, gain: float, seed: int) -> None:
        super().__init__(noise=0.12, seed=seed)
        self.gain = gain
        self.knobs["max_batch_size"] = 8
        self.phase = self.rng.uniform(0, 2 * math.pi)

    def performance(self, knobs: dict[str, int]) -> tuple[float, float]:
        return 1000 * (1 + self.gain if knobs["max_batch_size"] == 16 else 1), 0.02

    def measure(self, start: float, end: float) -> Measurement | None:
        window = super().measure(start, end)
        if window is None:
            return None
        speed = 1 + 0.15 * math.sin(self.phase + 2 * math.pi * (start + end) / 2 / 60)
        return replace(window, throughput=window.throughput * speed, goodput=window.goodput * speed)


class DoubleOnce:
    """Proposes batch 8 -> 16 (an explore move) while the batch is 8, from its 20th turn on
    (the guard has then been at batch 8 for a while, as on a plateau after the climb)."""

    name = "double_once"

    def __init__(self) -> None:
        self.asked = 0

    def propose(self, inp):
        self.asked += 1
        return Proposal("max_batch_size", 16, "test") if inp.knobs["max_batch_size"] == 8 and self.asked >= 20 else None


def kept_sixteen(gain: float, seed: int, confirm_windows: int) -> bool:
    worker = Plateau(gain, seed)
    guard, _ = make(worker, tuners=[DoubleOnce()], confirm_windows=confirm_windows)
    run(guard, 90)
    return worker.knobs["max_batch_size"] == 16


def test_on_a_drifting_plateau_interleaved_windows_keep_the_better_setting_where_one_window_guesses():
    runs = 100
    worse = {windows: sum(kept_sixteen(-0.05, seed, windows) for seed in range(runs)) for windows in (2, 8)}
    better = {windows: sum(kept_sixteen(0.10, seed, windows) for seed in range(runs)) for windows in (2, 8)}
    # Measured: one window pair kept the 5% worse batch 13 times in 100 and the 10% better
    # one 62 times; interleaved, 6 and 91.
    assert worse[8] <= 0.10 * runs and worse[8] < worse[2], worse
    assert better[8] >= 0.85 * runs and better[8] >= better[2] + 0.15 * runs, better


class SlowSets(Plateau):
    """Each set takes `set_seconds`, as a Triton model reload does (~5 s here): the clock
    moves on while it is made."""

    def __init__(self, set_seconds: float, seed: int) -> None:
        super().__init__(0.0, seed)  # no gain: within the noise, the interleaving runs to its budget
        self.set_seconds = set_seconds
        self.now = 0.0

    def apply(self, changes: dict[str, int]) -> dict[str, int]:
        self.now += self.set_seconds
        return super().apply(changes)


def interleaved_windows(set_seconds: float, seed: int) -> list[int]:
    """The window count of every interleaved verdict in 300 s."""
    worker = SlowSets(set_seconds, seed)
    guard, decisions = make(worker, tuners=[DoubleOnce()], clock=lambda: worker.now)
    while worker.now < 300:
        guard.step(worker.now)
        worker.now += 0.5
    return [d.evidence.windows for d in decisions if d.evidence is not None and d.evidence.interleaved]


def test_where_a_set_takes_seconds_an_interleaving_takes_fewer_windows():
    instant = [count for seed in range(10) for count in interleaved_windows(0.0, seed)]
    reloads = [count for seed in range(10) for count in interleaved_windows(5.0, seed)]
    assert instant and reloads
    assert max(instant) == 8 and max(reloads) == 5, (instant, reloads)  # 6 x 4 s of windows: ~3 of 9 s fit


def test_an_interleaved_verdict_leaves_the_chosen_setting_in_force_and_says_how_it_was_reached():
    worker = Plateau(0.10, seed=1)
    guard, decisions = make(worker, tuners=[DoubleOnce()])
    run(guard, 90)
    ended = [d for d in decisions if d.action in ("keep", "revert")]
    assert len(ended) == 1 and "interleaved over" in ended[0].reason, decisions
    evidence = ended[0].evidence
    assert evidence is not None and evidence.interleaved and evidence.windows >= 3 and evidence.metric == "goodput"
    assert ended[0].tuner == "double_once"
    assert worker.knobs["max_batch_size"] == (16 if ended[0].action == "keep" else 8)
    switches = [change["max_batch_size"] for change in worker.applied]
    assert switches[:3] == [16, 8, 16] and all(a != b for a, b in itertools.pairwise(switches))


class Flat(SimulatedWorker):
    """Nothing pays: every setting serves the same."""

    def performance(self, knobs: dict[str, int]) -> tuple[float, float]:
        return 500.0, 0.02


def test_the_tuner_stops_exploring_after_trials_that_do_not_pay_and_tries_again_later():
    worker = Flat(noise=0.0)
    guard, decisions = make(worker, explore_patience=3, reexplore_seconds=200.0)
    at: list[float] = []
    for tick in range(800):
        guard.step(tick * 0.5)
        at += [tick * 0.5] * (len(decisions) - len(at))
    stamped = list(zip(decisions, at))
    converged = [t for d, t in stamped if d.action == "converge"]
    assert converged and guard.view().phase in ("converged", "settled", "cooldown")
    first = converged[0]
    misses = [d for d, t in stamped if d.action == "revert" and t <= first]
    assert len(misses) == 3 and all(d.action != "keep" for d, _ in stamped)
    quiet = [d for d, t in stamped if d.action == "apply" and first < t < first + 200]
    assert quiet == [], "no explore move while converged"
    assert any(d.action == "apply" for d, t in stamped if t >= first + 200), "every direction is tried again later"


class PoweredWorker(SimulatedWorker):
    """The simulated worker with a GPU's power: a second lane raises throughput by 30% but
    adds as much power as the first, so the goodput objective wants it and the efficient
    setting does without."""

    @staticmethod
    def watts(knobs: dict[str, int]) -> float:
        return 100.0 + 150.0 * knobs["streams"]

    def measure(self, start: float, end: float) -> Measurement | None:
        window = super().measure(start, end)
        return None if window is None else replace(window, watts=self.watts(self.knobs), sm_active=0.6)


def best_goodput_per_watt(worker: PoweredWorker) -> float:
    best = 0.0
    for batch, lanes, threads in itertools.product([2**i for i in range(10)], range(1, 5), (1, 2)):
        knobs = {"max_batch_size": batch, "streams": lanes, "intra_op_threads": threads}
        throughput, p99 = worker.performance(knobs)
        if p99 <= SLO:
            best = max(best, throughput / worker.watts(knobs))
    return best


def test_goodput_per_watt_converges_on_the_efficient_setting_within_the_same_slo():
    efficient, fast = PoweredWorker(), PoweredWorker()
    guard, decisions = make(efficient, objective="goodput_per_watt")
    run(guard, 180)
    run(make(fast)[0], 180)
    per_watt = {}
    for name, worker in (("efficient", efficient), ("fast", fast)):
        throughput, p99 = worker.performance(worker.knobs)
        assert p99 <= SLO, (name, worker.knobs)
        per_watt[name] = throughput / worker.watts(worker.knobs)
    assert per_watt["efficient"] >= 0.95 * best_goodput_per_watt(efficient), (efficient.knobs, decisions[-5:])
    assert per_watt["efficient"] > 1.1 * per_watt["fast"], (efficient.knobs, fast.knobs)
    assert efficient.knobs["streams"] == 1 and fast.knobs["streams"] == 2
    judged = [d for d in decisions if d.evidence is not None and d.evidence.metric]
    assert {d.evidence.metric for d in judged} == {"goodput_per_watt"}
    trial = next(d.trial for d in decisions if d.action == "keep" and d.trial is not None)
    assert trial["watts"] is not None and trial["sm_active"] == 0.6 and trial["joules_per_request"] > 0
