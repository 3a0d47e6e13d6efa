"""What tuners see and what they return (pure value types), and the Tuner protocol."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from gputuned.performance import Measurement, over_objective

# explore: may raise goodput, kept only if it beats the baseline beyond noise.
# neutral: helps in ways goodput may not show (fewer allocations); kept unless it hurts.
# backoff: answers an SLO breach, OOM or saturated link; kept if it brings p99 down.
# shrink: frees resources; kept if goodput does not fall and the SLO holds.
ProposalKind = Literal["explore", "neutral", "backoff", "shrink"]


@dataclass(frozen=True)
class Proposal:
    """Set `knob` to `value`; `also` holds knobs that must move with it as one change
    (on the CPU, lanes and threads per lane share the same cores). `past` marks a move
    beyond a step in the same direction that was tried and did not pay: the reverted
    step does not block it, and its own revert blocks only itself (it is tried once).
    `wins_ties` marks an explore move kept unless goodput falls, with no margin to beat:
    a move to less (a smaller batch), whose latency and memory are lower at the same
    goodput, so that a tie is not a reason to stay."""

    knob: str
    value: int
    reason: str
    kind: ProposalKind = "explore"
    also: Mapping[str, int] = field(default_factory=dict)
    past: bool = False
    wins_ties: bool = False

    def changes(self) -> dict[str, int]:
        return {self.knob: self.value, **self.also}


@dataclass(frozen=True)
class TunerInput:
    window: Measurement  # the baseline: the newest settled window at the current knobs
    knobs: Mapping[str, int]
    bounds: Mapping[str, tuple[int, int]]
    slo_seconds: float
    device: str  # "cpu" or "cuda"
    cores: int
    item_bytes: int  # bytes of one input item (for pool sizing)
    ceilings: Mapping[str, int] = field(default_factory=dict)  # learned caps (after OOM)
    # (knob, from value, +1 or -1): explore steps that held the SLO but did not pay, since the
    # landscape last moved (directions.DirectionMemory); a tuner may reach past them
    no_gain: frozenset[tuple[str, int, int]] = frozenset()

    def clamp(self, knob: str, value: int) -> int:
        low, high = self.bounds.get(knob, (value, value))
        high = min(high, self.ceilings.get(knob, high))
        return max(low, min(high, value))

    def slo_breached(self) -> bool:
        """Whether the window's tail is over its objectives (p99 over the SLO; TTFT or TPOT p99 for a generative worker)."""
        return (over_objective(self.window, self.slo_seconds) or 0.0) > 1


class Tuner(Protocol):
    name: str

    def propose(self, inp: TunerInput) -> Proposal | None:
        """Same input, same answer: no state, no I/O."""
        ...


def changed(inp: TunerInput, knob: str, value: int, reason: str, kind: ProposalKind = "explore") -> Proposal | None:
    """A proposal to set `knob` to `value` (clamped to bounds), or None if that changes nothing."""
    if knob not in inp.knobs:
        return None
    value = inp.clamp(knob, value)
    if value == inp.knobs[knob]:
        return None
    return Proposal(knob, value, reason, kind)
