"""Small helpers for reading what a collector produced."""

from __future__ import annotations

from gputuned.knobs import CATALOGUE
from gputuned.samples import Collected


def values(collected: Collected, name: str) -> dict[tuple[str, ...], float]:
    """label values -> value for one metric family of a collector's output."""
    return {s.labels: s.value for s in collected.samples if s.spec.name == name}


def names(collected: Collected) -> set[str]:
    return {s.spec.name for s in collected.samples}


class ManualClock:
    """A clock tests advance by hand, so rates are exact and nothing sleeps."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def builtin_bounds(cores: int = 2, pool_mb: int = 4096) -> dict[str, tuple[int, int]]:
    """The live knobs of the built-in CPU worker and their bounds, from the catalogue, on a
    machine of `cores` CPUs with room for a pool of `pool_mb` MiB."""
    machine = {"pool_mb": pool_mb, "intra_op_threads": cores}
    return {
        name: (knob.minimum, machine.get(name, knob.maximum or knob.minimum))
        for name, knob in CATALOGUE.items()
        if knob.live and "builtin" in knob.kinds
    }
