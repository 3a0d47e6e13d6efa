"""Measuring online tuning under load, shared by bench/tuning.py and the GPU check (bench/gpu.py):
time-bounded loads, goodput over time, and settings compared side by side.

Side by side, because the machines these run on drift (a shared VM by 20-35% within a minute): an
oracle measured minutes before an online run says more about the drift than about the
tuner, while windows seconds apart share it.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from gputuned.control.client import SLOW_SET_SECONDS, ControlClient
from gputuned.loadgen import LoadPlan, LoadResult, run_load
from gputuned.sweep import measure_point


def timed_load(
    url: str, seconds: float, clients: int | None = None, rate: float | None = None, timeline: bool = False, items: int = 1
) -> LoadPlan:
    """A load bounded by time alone: `clients` in a closed loop, or `rate` requests/s in an
    open one, each request carrying `items` inputs."""
    return LoadPlan(url=url, concurrency=clients, rate=rate, requests=10**9, duration=seconds, timeline=timeline, batch=items)


def run_load_in_thread(plan: LoadPlan) -> tuple[threading.Thread, dict[str, LoadResult]]:
    """`plan` run in a thread of its own, started; its result is in the dict under "result"
    once the thread has ended."""
    box: dict[str, LoadResult] = {}

    def target() -> None:
        box["result"] = asyncio.run(run_load(plan))

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def goodput_curve(timeline: list[tuple[float, float]], start: float, end: float, slo: float) -> list[float]:
    """Completions within the SLO per second, one value per second from `start`."""
    bins = [0] * int(end - start)  # whole seconds only: a partial last second would read as a drop
    for done, latency in timeline:
        index = int(done - start)
        if 0 <= index < len(bins) and latency <= slo:
            bins[index] += 1
    return [float(b) for b in bins]


def rolling(values: list[float], width: int) -> list[float]:
    return [statistics.mean(values[max(0, i - width + 1) : i + 1]) for i in range(len(values))]


def first_at_or_above(values: list[float], threshold: float) -> int | None:
    return next((i for i, v in enumerate(values) if v >= threshold), None)


def side_by_side(
    admin: Path,
    plan: LoadPlan,
    settings: list[dict[str, int]],
    slo: float,
    rounds: int,
    seconds: float,
    worker: str | None = None,
) -> list[list[tuple[float, float]]]:
    """Each setting measured once per round (after a 1 s warm-up), round after round, on the
    same worker under `plan`'s load (its duration is replaced): windows seconds apart share
    the machine's drift. Every other round takes the settings in reverse (A B, B A), so
    that neither the drift within a round nor what the setting before leaves behind (a
    Triton model just reloaded: the tuned setting, measured first, read 0.89 of the same
    setting measured right after it) always falls on the same setting. Returns, per
    setting, its (goodput, p99) in every round."""
    windows: list[list[tuple[float, float]]] = [[] for _ in settings]
    for round_index in range(rounds):
        order = list(enumerate(settings))
        for index, knobs in order if round_index % 2 == 0 else reversed(order):
            with ControlClient(admin) as client:
                client.set(knobs, worker, timeout=SLOW_SET_SECONDS)
            measure_point(_lasting(plan, 1.0), slo)
            _, goodput, p99, _ = measure_point(_lasting(plan, seconds), slo)
            windows[index].append((goodput, p99 if p99 is not None else float("inf")))
            print(
                f"round {round_index + 1} {knobs}: goodput {goodput:.0f}/s, p99 {windows[index][-1][1] * 1000:.1f} ms",
                file=sys.stderr,
            )
    return windows


@dataclass(frozen=True)
class Verdict:
    """What `side_by_side`'s windows say, setting 0 being the tuned one."""

    goodput: list[float]  # median goodput of each setting
    p99: list[float]  # median p99 of each setting
    best: int  # the candidate (index >= 1) with the best median goodput whose median p99 meets the SLO, else the best
    ratios: list[float]  # per round, the tuned setting's goodput over the best candidate's


def judge(windows: list[list[tuple[float, float]]], slo: float) -> Verdict:
    goodput = [statistics.median(g for g, _ in rounds) for rounds in windows]
    p99 = [statistics.median(p for _, p in rounds) for rounds in windows]
    ranked = sorted(range(1, len(windows)), key=lambda index: goodput[index], reverse=True)
    best = next((index for index in ranked if p99[index] <= slo), ranked[0])
    ratios = [tuned[0] / max(other[0], 1e-9) for tuned, other in zip(windows[0], windows[best])]
    return Verdict(goodput, p99, best, ratios)


def _lasting(plan: LoadPlan, seconds: float) -> LoadPlan:
    return LoadPlan(**{**plan.__dict__, "duration": seconds})
