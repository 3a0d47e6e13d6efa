"""Each tuner on synthetic windows: same input, same proposal."""

from __future__ import annotations

from dataclasses import replace

from gputuned.tuners import default_tuners
from gputuned.tuners.base import TunerInput
from gputuned.tuners.batch import BatchDownProbe, BatchFillTuner, BatchJumpTuner, BatchTuner
from gputuned.tuners.pool import PoolTuner, working_set_mb
from gputuned.tuners.queue_delay import QueueDelayTuner
from gputuned.tuners.scheduling import SchedulingBackoff, SchedulingTuner
from gputuned.tuners.streams import StreamsTuner
from gputuned.tuners.threads import ThreadsTuner
from tests.helpers import builtin_bounds, settled_window

WINDOW = settled_window(
    goodput=500,
    p99=0.05,
    batch_seconds=0.02,
    busy_ratio=0.9,
    pool_misses=10,
    in_system=40,  # a deep queue: a doubled batch fills from it at once
    items_per_request=0.0,
)
KNOBS = {"max_batch_size": 8, "max_queue_delay_us": 0, "streams": 1, "pool_mb": 0, "intra_op_threads": 2}
BOUNDS = builtin_bounds()


def inp(window=WINDOW, knobs=None, device="cpu", **kw) -> TunerInput:
    return TunerInput(window, {**KNOBS, **(knobs or {})}, BOUNDS, 0.1, device, 2, 3 * 64 * 64 * 4, **kw)


def test_a_batch_the_queue_cannot_fill_is_doubled_with_the_wait_that_fills_it():
    # 8 clients, batches of 4 full, 5 ms each: 4 wait behind the running batch, too few to fill 8 at once.
    short = replace(WINDOW, mean_batch=4, in_system=8, arrival_rate=700, batch_seconds=0.005)
    knobs = {"max_batch_size": 4}
    assert BatchTuner().propose(inp(short, knobs=knobs)) is None  # 8 alone would go out as batches of 4
    proposal = BatchFillTuner().propose(inp(short, knobs=knobs))
    assert proposal.changes() == {"max_batch_size": 8, "max_queue_delay_us": 10000}  # 7 more at 700/s
    assert "4.0 items waiting behind the running ones: try 8, waiting up to 10000 us to fill it" in proposal.reason
    # Requests of 2 items: 8 in the worker are 16 items, 12 waiting behind the batch of 4; 8 fills at once.
    assert BatchTuner().propose(inp(replace(short, items_per_request=2), knobs=knobs)).changes() == {"max_batch_size": 8}
    waits_already = {"max_batch_size": 4, "max_queue_delay_us": 20000}
    assert BatchTuner().propose(inp(short, knobs=waits_already)).changes() == {"max_batch_size": 8}
    assert BatchFillTuner().propose(inp(short, knobs=waits_already)) is None
    deep = inp(replace(short, in_system=12), knobs=knobs)  # 8 wait: the doubled batch fills at once
    assert BatchTuner().propose(deep).changes() == {"max_batch_size": 8} and BatchFillTuner().propose(deep) is None
    # All 8 requests in the worker are in the running batch: 16 would gather nothing more.
    assert BatchFillTuner().propose(inp(replace(short, mean_batch=7.5, in_system=7.9), knobs={"max_batch_size": 8})) is None
    assert BatchFillTuner().propose(inp(replace(short, p99=0.2), knobs=knobs)) is None  # a breach is the batch tuner's


def test_batch_doubles_full_batches_and_halves_on_breach_oom_or_pcie():
    tuner = BatchTuner()
    assert tuner.propose(inp()).value == 16 and tuner.propose(inp()).kind == "explore"
    assert tuner.propose(inp(replace(WINDOW, mean_batch=3))) is None
    breach = tuner.propose(inp(replace(WINDOW, p99=0.11, batch_seconds=0.04)))  # the batch is 40% of the SLO, a third of p99
    assert (breach.value, breach.kind) == (4, "backoff") and "over the 100 ms SLO" in breach.reason
    queueing = tuner.propose(inp(replace(WINDOW, p99=0.2, batch_seconds=0.005)))  # quick batches, long queue: grow
    assert (queueing.value, queueing.kind) == (16, "explore")
    overload = tuner.propose(inp(replace(WINDOW, p99=0.3, batch_seconds=0.04)))  # slow batches but mostly queueing: grow
    assert overload.value == 16
    assert tuner.propose(inp(replace(WINDOW, oom=2))).value == 4
    assert tuner.propose(inp(replace(WINDOW, pcie_utilization=0.93))).value == 6
    assert tuner.propose(inp(knobs={"max_batch_size": 512})) is None  # at its bound
    assert tuner.propose(inp(ceilings={"max_batch_size": 11})).value == 11  # a learned OOM ceiling


def test_the_down_probe_halves_full_batches_unless_the_slo_is_breached():
    probe = BatchDownProbe()
    proposal = probe.propose(inp())
    assert (proposal.value, proposal.kind, proposal.wins_ties) == (4, "explore", True)
    assert probe.propose(inp(replace(WINDOW, mean_batch=5))).value == 4  # not full, but half would bind
    assert probe.propose(inp(replace(WINDOW, mean_batch=4))) is None  # half would not bind
    assert probe.propose(inp(replace(WINDOW, p99=0.11, batch_seconds=0.04))) is None  # the batch tuner's case
    assert probe.propose(inp(knobs={"max_batch_size": 1})) is None  # at its bound
    after_lanes = BatchDownProbe(several_lanes=True)
    assert after_lanes.propose(inp(knobs={"max_batch_size": 8, "streams": 1})) is None  # the batch was chosen at one lane
    assert after_lanes.propose(inp(knobs={"max_batch_size": 8, "streams": 2})).value == 4


def test_queue_delay_targets_the_fill_time_within_the_slo_slack():
    tuner = QueueDelayTuner()
    proposal = tuner.propose(inp(knobs={"max_batch_size": 8}))
    assert proposal.value == int(7 / 500 * 1e6)  # 14 ms to fill 7 more at 500/s
    slow = replace(WINDOW, arrival_rate=10)
    assert tuner.propose(inp(slow)).value == int((0.1 - 0.04) / 2 * 1e6)  # capped by the slack
    assert tuner.propose(inp(knobs={"max_batch_size": 1, "max_queue_delay_us": 0})) is None
    assert tuner.propose(inp(knobs={"max_queue_delay_us": 14_100})) is None  # close enough


def test_streams_adds_a_lane_when_saturated_and_drops_idle_ones():
    tuner = StreamsTuner()
    assert tuner.propose(inp()).value == 2
    assert tuner.propose(inp(replace(WINDOW, busy_ratio=0.2), knobs={"streams": 3})).value == 2
    assert tuner.propose(inp(replace(WINDOW, busy_ratio=0.5))) is None
    gpu_full = replace(WINDOW, device_busy=0.99)
    assert tuner.propose(inp(gpu_full, device="cuda")) is None
    assert tuner.propose(inp(gpu_full, device="cpu")).value == 2  # on the CPU the trial decides
    assert tuner.propose(inp(knobs={"streams": 2}, device="cpu")) is None  # no more lanes than the 2 cores


def test_pool_covers_the_working_set_and_shrinks_when_idle_or_oversized():
    tuner = PoolTuner()
    need = working_set_mb(inp())
    assert need == 1  # 8 items x 48 KiB x 2 blocks (one lane + one filling) x 1.25 = 0.94 MiB
    assert tuner.propose(inp()).value == need and tuner.propose(inp()).kind == "neutral"
    assert tuner.propose(inp(replace(WINDOW, arrival_rate=0), knobs={"pool_mb": 64})).value == 0
    assert tuner.propose(inp(replace(WINDOW, pool_misses=0), knobs={"pool_mb": 64})).value == need
    assert tuner.propose(inp(replace(WINDOW, pool_misses=0), knobs={"pool_mb": need})) is None


def test_threads_share_the_cores_between_lanes():
    tuner = ThreadsTuner()
    assert tuner.propose(inp(knobs={"streams": 2, "intra_op_threads": 2})).value == 1
    assert tuner.propose(inp(knobs={"streams": 1, "intra_op_threads": 1})).value == 2
    assert tuner.propose(inp(knobs={"streams": 1, "intra_op_threads": 2})) is None
    assert tuner.propose(inp(device="cuda")) is None


def test_sched_batch_is_tried_once_off_and_given_back_on_an_slo_breach():
    explore, backoff = SchedulingTuner(), SchedulingBackoff()
    off, on = {"sched_batch": 0}, {"sched_batch": 1}
    breach = replace(WINDOW, p99=0.15)
    tried = explore.propose(inp(knobs=off))
    assert (tried.changes(), tried.kind) == ({"sched_batch": 1}, "explore")
    assert explore.propose(inp(knobs=on)) is None and explore.propose(inp(breach, knobs=off)) is None  # no exploring past the SLO
    given_back = backoff.propose(inp(breach, knobs=on))
    assert (given_back.changes(), given_back.kind) == ({"sched_batch": 0}, "backoff")
    assert backoff.propose(inp(knobs=on)) is None and backoff.propose(inp(breach, knobs=off)) is None
    assert explore.propose(inp()) is None and backoff.propose(inp(breach)) is None  # a worker without the knob
    assert isinstance(default_tuners()[0], SchedulingBackoff)  # before the batch backs off


def test_tuners_are_pure():
    for tuner in default_tuners():
        assert tuner.propose(inp()) == tuner.propose(inp())


def test_past_a_doubling_that_did_not_pay_the_batch_takes_the_whole_queue():
    queue = replace(WINDOW, mean_batch=1, in_system=7.5)  # 8 clients: 6.5 wait behind a batch of 1
    knobs = {"max_batch_size": 1}
    assert BatchTuner().propose(inp(queue, knobs=knobs)).value == 2
    assert BatchJumpTuner().propose(inp(queue, knobs=knobs)) is None  # the doubling comes first
    doubled = inp(queue, knobs=knobs, no_gain=frozenset({("max_batch_size", 1, 1)}))
    assert BatchTuner().propose(doubled) is None  # the jump is asked after the lanes
    after = BatchJumpTuner().propose(doubled)
    assert (after.value, after.past) == (8, True) and "2 was no better, 6.5 items wait" in after.reason
    deep = inp(replace(queue, in_system=40), knobs=knobs, no_gain=frozenset({("max_batch_size", 1, 1)}))
    assert BatchJumpTuner().propose(deep).value == 8  # at most 8 times further in one jump
    shallow = inp(replace(queue, in_system=2.5), knobs=knobs, no_gain=frozenset({("max_batch_size", 1, 1)}))
    assert BatchJumpTuner().propose(shallow) is None  # 1.5 wait: nothing past the doubling to take
    oom = inp(replace(queue, oom=1), knobs=knobs, no_gain=frozenset({("max_batch_size", 1, 1)}))
    assert BatchJumpTuner().propose(oom) is None  # out of memory at 1: nothing grows


def test_after_a_lane_alone_gained_nothing_a_lane_comes_with_half_the_batch():
    saturated = replace(WINDOW, busy_ratio=0.9, mean_batch=32)
    knobs = {"max_batch_size": 32, "streams": 1, "intra_op_threads": 2}
    assert StreamsTuner().propose(inp(saturated, knobs=knobs)).changes() == {"streams": 2, "intra_op_threads": 1}
    after = StreamsTuner().propose(inp(saturated, knobs=knobs, no_gain=frozenset({("streams", 1, 1)})))
    assert after.changes() == {"streams": 2, "max_batch_size": 16, "intra_op_threads": 1} and after.past
    assert "2 lanes at batches of 32 gained nothing: try 2 lanes at 16, as many items in flight" in after.reason
    half_full = inp(replace(saturated, mean_batch=10), knobs=knobs, no_gain=frozenset({("streams", 1, 1)}))
    assert StreamsTuner().propose(half_full) is None  # batches of 10 at a maximum of 32: halving it would not bind
