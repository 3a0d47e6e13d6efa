"""Judging a change (pure): harm while it runs, and keep or revert once its window is in.

The objective is goodput, or where `[tuning] objective = "goodput_per_watt"`, goodput per
watt of the worker's GPU energy (both windows must have an energy reading; else goodput).
While almost nothing meets the SLO (overload), either way throughput, which is what drains
the queue: efficiency is only worth having once the requests are served in time. An explore move must beat the baseline by the noise margin (a
move that `wins_ties`, half the batch, only must not lose); a neutral move, a shrink or a
back-off must not lose beyond the margin, and a back-off is judged by its tail alone. A
window over the objectives reverts, unless the baseline was already over them and the tail
did not get worse beyond the noise. The tail is the p99 against the SLO, or for a generative
worker the worse share of requests over the TTFT or the TPOT objective, against the 1% a p99
objective allows (`performance.over_objective`).

A generative worker is also harmed by preemptions (its KV cache ran out and sequences are
recomputed) that the baseline did not have, and by a KV cache filled to exhaustion.
"""

from __future__ import annotations

from dataclasses import dataclass

from gputuned.control.messages import Evidence
from gputuned.performance import Measurement, describe_tail, over_objective
from gputuned.tuners.base import Proposal

OBJECTIVES = ("goodput", "goodput_per_watt")
JUDGED_ON = (*OBJECTIVES, "throughput")  # the Measurement fields a verdict may compare
OVERLOAD_SHARE = 0.5  # below this share of requests within the SLO, the worker is overloaded
KV_CACHE_EXHAUSTED = 0.98  # a generative worker's KV cache this full admits nothing more without preempting


@dataclass(frozen=True)
class Verdict:
    keep: bool
    why: str  # for a revert: what the window showed
    no_gain: bool  # an explore move that held the SLO but did not beat the baseline
    evidence: Evidence


def objective(baseline: Measurement, preferred: str = "goodput", window: Measurement | None = None) -> str:
    """The Measurement field a change is judged on: throughput under overload, else the
    `preferred` objective, goodput per watt only where the windows have energy readings."""
    if baseline.goodput < OVERLOAD_SHARE * baseline.throughput:
        return "throughput"
    if preferred == "goodput_per_watt" and baseline.watts and (window is None or window.watts):
        return "goodput_per_watt"
    return "goodput"


def bar(proposal: Proposal, margin: float) -> float:
    """The relative change of the objective the move must beat."""
    if proposal.kind != "explore":
        return -margin
    return 0.0 if proposal.wins_ties else margin


def harmful(proposal: Proposal, baseline: Measurement, window: Measurement, slo: float, max_error_ratio: float) -> str:
    """Damage that reverts at once, warmup or not, said in words ("" for none): a new breach
    of the objectives (but for a back-off), a spike of the server's failures, running out of
    memory, or for a generative worker new preemptions or an exhausted KV cache."""
    now, before = over_objective(window, slo), over_objective(baseline, slo)
    newly_breached = now is not None and now > 1 and not (before is not None and before > 1)
    if newly_breached and proposal.kind != "backoff":
        return f"{describe_tail(window)} breaks the objectives"
    return _damage(baseline, window, max_error_ratio)


def _damage(baseline: Measurement, window: Measurement, max_error_ratio: float) -> str:
    requests = max(window.arrival_rate * window.seconds, 1.0)
    if window.failed / requests > max_error_ratio and window.failed > baseline.failed:
        return f"{window.failed} requests failed"
    if window.oom > 0:
        return "out of memory"
    now, before = window.generation, baseline.generation
    if now is not None and before is not None:
        if now.preemptions > 0 and now.preemptions / window.seconds > 2 * before.preemptions / baseline.seconds:
            return f"{now.preemptions} sequences preempted"
        if now.kv_cache_usage >= KV_CACHE_EXHAUSTED > before.kv_cache_usage:
            return f"the KV cache is {now.kv_cache_usage:.0%} full"
    return ""


def judge(
    proposal: Proposal,
    baseline: Measurement,
    margins: dict[str, float],
    window: Measurement,
    slo: float,
    preferred: str = "goodput",
) -> Verdict:
    """The trial window against the baseline; `margins` is the noise of each of JUDGED_ON the
    baseline showed; `preferred` the [tuning] objective."""
    on_p99 = Evidence("p99", windows=2)
    now, before = over_objective(window, slo), over_objective(baseline, slo)
    if proposal.kind == "backoff":
        improved = now is not None and before is not None and now < before
        return Verdict(now is None or now <= 1 or improved, f"{describe_tail(window)} did not come down", False, on_p99)
    base_breached = before is not None and before > 1
    if now is not None and now > 1:
        # Already over the objectives before the change (overload): the change may not make
        # the tail worse beyond the noise; otherwise it must keep it within them.
        tolerated = before * (1 + margins["throughput"]) if base_breached and before else 1.0
        if now > tolerated:
            worse = " and is worse than before" if base_breached else ""
            return Verdict(False, f"{describe_tail(window)} breaks the objectives{worse}", False, on_p99)
    metric = objective(baseline, preferred, window)
    before, after, margin = getattr(baseline, metric), getattr(window, metric), margins[metric]
    needed = bar(proposal, margin)
    evidence = Evidence(metric, 2, False, after / before - 1 if before > 0 else None, needed, margin)
    if proposal.kind == "explore":
        why = f"{metric} {_amount(metric, after)} did not beat {_amount(metric, before)} by the {needed:.0%} noise margin"
        return Verdict(after > before * (1 + needed), why, True, evidence)
    why = f"{metric} fell from {_amount(metric, before)} to {_amount(metric, after)}"
    return Verdict(after >= before * (1 + needed), why, False, evidence)


def _amount(metric: str, value: float) -> str:
    """A judged value with its unit: requests per second, or per joule for goodput per watt."""
    return f"{value:.3g}/J" if metric == "goodput_per_watt" else f"{value:.1f}/s"
