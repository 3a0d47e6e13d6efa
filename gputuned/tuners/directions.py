"""Which directions of which knobs did not pay, so the guard does not try them again.

A direction is a knob moved from a value up or down. One that was reverted (or kept the
other way: a kept 16 -> 8 rules out 8 -> 16) is refused until the landscape moves, which
is another knob's explore change being kept, or a workload shift. A move marked `past`
(beyond a reverted step in the same direction, say from 1 straight to 8 after 2 did not
pay) is remembered apart from the step: the step does not block it, and its own revert
blocks only itself, so it is tried once. Explore steps that held the SLO but gained
nothing are also kept apart, without the `past` mark: the tuners are told of them
(`TunerInput.no_gain`), to reach past them.
"""

from __future__ import annotations

from typing import NamedTuple

from gputuned.tuners.base import Proposal


class Direction(NamedTuple):
    knob: str
    start: int  # the value the move started from
    sign: int  # +1 up, -1 down
    past: bool  # a move beyond a step in the same direction that did not pay

    @classmethod
    def of(cls, proposal: Proposal, start: int) -> Direction:
        return cls(proposal.knob, start, 1 if proposal.value > start else -1, proposal.past)

    def undoing(self, kept_at: int) -> Direction:
        """The move that would undo this one once kept at `kept_at` (a step, never `past`)."""
        return Direction(self.knob, kept_at, -self.sign, False)


NoGain = tuple[str, int, int]  # (knob, start, sign) of an explore step that held the SLO and did not pay


class DirectionMemory:
    def __init__(self) -> None:
        self._refused: set[Direction] = set()
        self._no_gain: set[NoGain] = set()

    def refuse(self, direction: Direction) -> None:
        self._refused.add(direction)

    def refused(self, direction: Direction) -> bool:
        return direction in self._refused

    def note_no_gain(self, direction: Direction) -> None:
        """An explore step that held the SLO and did not pay (refuse it too)."""
        self._no_gain.add((direction.knob, direction.start, direction.sign))

    def no_gain(self) -> frozenset[NoGain]:
        return frozenset(self._no_gain)

    def landscape_moved(self, knob: str) -> None:
        """`knob`'s explore change was kept: the other knobs' refused directions may pay now."""
        self._refused = {entry for entry in self._refused if entry.knob == knob}
        self._no_gain = {entry for entry in self._no_gain if entry[0] == knob}

    def clear(self) -> None:
        self._refused.clear()
        self._no_gain.clear()
