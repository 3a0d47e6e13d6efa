"""Judging a change (pure): harm while it runs, and keep or revert once its window is in.

The objective is goodput; while almost nothing meets the SLO (overload), throughput, which
is what drains the queue. An explore move must beat the baseline by the noise margin (a
move that `wins_ties`, half the batch, only must not lose); a neutral move, a shrink or a
back-off must not lose beyond the margin, and a back-off is judged by p99 alone. A window
over the SLO reverts, unless the baseline was already over it and p99 did not get worse
beyond the noise.
"""

from __future__ import annotations

from dataclasses import dataclass

from gputuned.control.messages import Evidence
from gputuned.performance import Measurement
from gputuned.tuners.base import Proposal

OVERLOAD_SHARE = 0.5  # below this share of requests within the SLO, the worker is overloaded


@dataclass(frozen=True)
class Verdict:
    keep: bool
    why: str  # for a revert: what the window showed
    no_gain: bool  # an explore move that held the SLO but did not beat the baseline
    evidence: Evidence


def objective(baseline: Measurement) -> str:
    """The Measurement field a change is judged on."""
    return "throughput" if baseline.goodput < OVERLOAD_SHARE * baseline.throughput else "goodput"


def bar(proposal: Proposal, margin: float) -> float:
    """The relative change of the objective the move must beat."""
    if proposal.kind != "explore":
        return -margin
    return 0.0 if proposal.wins_ties else margin


def harmful(proposal: Proposal, baseline: Measurement, window: Measurement, slo: float, max_error_ratio: float) -> bool:
    """Damage that reverts at once, warmup or not: a new SLO breach (but for a back-off),
    a spike of the server's failures, or running out of memory."""
    newly_breached = window.p99 is not None and window.p99 > slo and not (baseline.p99 and baseline.p99 > slo)
    requests = max(window.arrival_rate * window.seconds, 1.0)
    error_spike = window.failed / requests > max_error_ratio and window.failed > baseline.failed
    return (newly_breached and proposal.kind != "backoff") or error_spike or window.oom > 0


def judge(proposal: Proposal, baseline: Measurement, margins: dict[str, float], window: Measurement, slo: float) -> Verdict:
    """The trial window against the baseline; `margins` is the noise of goodput and of
    throughput the baseline showed."""
    on_p99 = Evidence("p99", windows=2)
    if proposal.kind == "backoff":
        improved = window.p99 is not None and baseline.p99 is not None and window.p99 < baseline.p99
        slo_ok = window.p99 is None or window.p99 <= slo
        return Verdict(slo_ok or improved, "p99 did not come down", False, on_p99)
    base_breached = baseline.p99 is not None and baseline.p99 > slo
    if window.p99 is not None and window.p99 > slo:
        # Already over the SLO before the change (overload): the change may not make p99
        # worse beyond the noise; otherwise it must keep p99 within the SLO.
        tolerated = baseline.p99 * (1 + margins["throughput"]) if base_breached and baseline.p99 else slo
        if window.p99 > tolerated:
            worse = " and is worse than before" if base_breached else ""
            return Verdict(False, f"p99 {window.p99 * 1000:.1f} ms breaks the SLO{worse}", False, on_p99)
    metric = objective(baseline)
    before, after, margin = getattr(baseline, metric), getattr(window, metric), margins[metric]
    needed = bar(proposal, margin)
    evidence = Evidence(metric, 2, False, after / before - 1 if before > 0 else None, needed, margin)
    if proposal.kind == "explore":
        why = f"{metric} {after:.1f}/s did not beat {before:.1f}/s by the {needed:.0%} noise margin"
        return Verdict(after > before * (1 + needed), why, True, evidence)
    return Verdict(after >= before * (1 + needed), f"{metric} fell from {before:.1f}/s to {after:.1f}/s", False, evidence)
