"""Small helpers for reading what a collector produced."""

from __future__ import annotations

import dataclasses

from gputuned.knobs import CATALOGUE
from gputuned.performance import Measurement
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


def settled_window(**changes: object) -> Measurement:
    """A settled 3 s window of a worker serving 500 requests/s at batch 8 within a 100 ms SLO;
    `changes` set other fields."""
    base = Measurement(
        seconds=3.0,
        arrival_rate=500.0,
        throughput=500.0,
        goodput=490.0,
        p99=0.06,
        failed=0,
        mean_batch=8.0,
        batch_seconds=0.01,
        busy_ratio=0.8,
        queue_depth=4.0,
        lanes=1,
        oom=0,
        pool_hits=0,
        pool_misses=0,
        in_system=16.0,
        items_per_request=1.0,
    )
    return dataclasses.replace(base, **changes)
