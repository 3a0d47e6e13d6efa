"""The guard's small parts, each on its own, in simulated time."""

from __future__ import annotations

from dataclasses import replace

from gputuned.tuners.base import Proposal
from gputuned.tuners.ceilings import Ceilings
from gputuned.tuners.directions import Direction, DirectionMemory
from gputuned.tuners.flaps import FlapTracker
from gputuned.tuners.shifts import ShiftDetector, relative_change
from gputuned.tuners.stop_rule import StopRule
from tests.helpers import settled_window

WINDOW = settled_window(arrival_rate=400.0, throughput=400.0, goodput=390.0, p99=0.05)


def test_a_refused_direction_blocks_only_itself_and_a_past_move_is_remembered_apart():
    memory = DirectionMemory()
    up_from_1 = Direction.of(Proposal("max_batch_size", 2, "double"), 1)
    memory.refuse(up_from_1)
    assert memory.refused(up_from_1)
    assert not memory.refused(Direction.of(Proposal("max_batch_size", 8, "jump", past=True), 1))
    assert not memory.refused(Direction.of(Proposal("max_batch_size", 1, "halve"), 2))
    assert not memory.refused(Direction.of(Proposal("streams", 2, "lane"), 1))


def test_a_kept_change_rules_out_its_undoing():
    kept = Direction.of(Proposal("max_batch_size", 8, "halve"), 16)
    assert kept.undoing(8) == Direction("max_batch_size", 8, 1, False)


def test_another_knobs_keep_forgets_refusals_of_the_others_and_keeps_its_own():
    memory = DirectionMemory()
    batch, lanes = Direction("max_batch_size", 8, 1, False), Direction("streams", 1, 1, False)
    for direction in (batch, lanes):
        memory.refuse(direction)
        memory.note_no_gain(direction)
    memory.landscape_moved("streams")
    assert not memory.refused(batch) and memory.refused(lanes)
    assert memory.no_gain() == frozenset({("streams", 1, 1)})
    memory.clear()
    assert not memory.refused(lanes) and memory.no_gain() == frozenset()


def test_a_knob_reverted_too_often_within_the_window_is_left_alone_until_the_window_passes():
    flaps = FlapTracker(limit=3, window=300.0)
    for t in (0.0, 10.0):
        flaps.reverted("streams", t)
    assert not flaps.flapping("streams", 20.0)
    flaps.reverted("streams", 20.0)
    assert flaps.flapping("streams", 21.0) and not flaps.flapping("max_batch_size", 21.0)
    assert not flaps.flapping("streams", 301.0)  # the first revert aged out
    flaps.reverted("streams", 302.0)
    assert flaps.flapping("streams", 303.0)
    flaps.clear()
    assert not flaps.flapping("streams", 303.0)


def test_a_ceiling_only_comes_down():
    ceilings = Ceilings()
    ceilings.learn("max_batch_size", 31)
    ceilings.learn("max_batch_size", 63)
    assert ceilings.as_dict() == {"max_batch_size": 31}
    ceilings.learn("max_batch_size", 15)
    assert ceilings.as_dict() == {"max_batch_size": 15}


def test_our_own_change_moves_one_signal_and_is_no_shift():
    shifts = ShiftDetector(threshold=0.5)
    assert shifts.check(WINDOW) is None  # the first baseline is the reference
    closed_loop_better = replace(WINDOW, arrival_rate=900.0)  # the same clients, served faster
    assert shifts.check(closed_loop_better) is None
    open_loop_slower = replace(WINDOW, in_system=40.0)  # the same arrivals, more inside
    assert shifts.check(open_loop_slower) is None


def test_both_signals_moving_together_or_the_input_size_moving_is_a_shift_and_becomes_the_reference():
    shifts = ShiftDetector(threshold=0.5)
    shifts.check(WINDOW)
    fewer_clients = replace(WINDOW, arrival_rate=150.0, in_system=6.0)
    what = shifts.check(fewer_clients)
    assert what is not None and "arrival rate 400 -> 150" in what
    assert shifts.reference is fewer_clients
    assert shifts.check(fewer_clients) is None
    assert shifts.check(replace(fewer_clients, items_per_request=4.0)) is not None


def test_relative_change_from_zero_is_infinite_for_any_rise():
    assert relative_change(0.0, 0.0) == 0.0
    assert relative_change(0.0, 1.0) == float("inf")
    assert relative_change(200.0, 100.0) == -0.5


def test_the_stop_rule_converges_after_patience_misses_in_a_row_and_reexplores_later():
    stop = StopRule(patience=3, reexplore_seconds=600.0)
    assert not stop.missed(10.0) and not stop.missed(20.0)
    stop.paid()  # a keep resets the count
    assert not stop.missed(30.0) and not stop.missed(40.0)
    assert stop.missed(50.0) and stop.converged
    assert not stop.missed(60.0)  # converging is said once
    assert not stop.due_to_reexplore(649.0) and stop.due_to_reexplore(650.0)
    stop.reset()
    assert not stop.converged and stop.misses == 0
