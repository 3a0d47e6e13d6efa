"""Judging a trial window against its baseline (pure)."""

from __future__ import annotations

from dataclasses import replace

from gputuned.performance import Generation
from gputuned.tuners.base import Proposal
from gputuned.tuners.verdict import bar, harmful, judge, objective
from tests.helpers import settled_window

SLO = 0.1
MARGINS = {"goodput": 0.03, "throughput": 0.03}
BASE = settled_window()
EXPLORE = Proposal("max_batch_size", 16, "double")


def test_an_explore_move_is_kept_only_beyond_the_margin_and_its_evidence_says_so():
    kept = judge(EXPLORE, BASE, MARGINS, replace(BASE, goodput=510.0), SLO)
    assert kept.keep and kept.evidence.metric == "goodput" and kept.evidence.windows == 2
    assert kept.evidence.bar == 0.03 and abs(kept.evidence.gain - 20 / 490) < 1e-9
    tied = judge(EXPLORE, BASE, MARGINS, replace(BASE, goodput=500.0), SLO)
    assert not tied.keep and tied.no_gain and "did not beat" in tied.why


def test_a_move_that_wins_ties_and_a_neutral_one_must_only_not_lose():
    halve = replace(EXPLORE, value=4, wins_ties=True)
    assert bar(halve, 0.03) == 0.0 and judge(halve, BASE, MARGINS, replace(BASE, goodput=491.0), SLO).keep
    neutral = replace(EXPLORE, kind="neutral")
    assert bar(neutral, 0.03) == -0.03
    assert judge(neutral, BASE, MARGINS, replace(BASE, goodput=480.0), SLO).keep
    fell = judge(neutral, BASE, MARGINS, replace(BASE, goodput=400.0), SLO)
    assert not fell.keep and not fell.no_gain and "fell from" in fell.why


def test_a_breach_reverts_unless_the_baseline_was_over_and_p99_did_not_get_worse():
    breached = judge(EXPLORE, BASE, MARGINS, replace(BASE, goodput=600.0, p99=0.2), SLO)
    assert not breached.keep and breached.evidence.metric == "p99"
    assert breached.why == "p99 200.0 ms breaks the objectives"
    overloaded = replace(BASE, p99=0.3, goodput=100.0, throughput=500.0)
    assert objective(overloaded) == "throughput"
    better = judge(EXPLORE, overloaded, MARGINS, replace(overloaded, p99=0.305, throughput=600.0), SLO)
    assert better.keep and better.evidence.metric == "throughput"


def test_a_backoff_is_judged_by_p99_alone():
    backoff = replace(EXPLORE, value=4, kind="backoff")
    over = replace(BASE, p99=0.2)
    assert judge(backoff, over, MARGINS, replace(over, p99=0.15, goodput=10.0), SLO).keep  # p99 came down
    assert not judge(backoff, over, MARGINS, replace(over, p99=0.25), SLO).keep


def test_harm_is_a_new_breach_a_failure_spike_or_running_out_of_memory():
    assert not harmful(EXPLORE, BASE, BASE, SLO, 0.01)
    assert harmful(EXPLORE, BASE, replace(BASE, p99=0.2), SLO, 0.01)
    assert not harmful(replace(EXPLORE, kind="backoff"), BASE, replace(BASE, p99=0.2), SLO, 0.01)
    assert harmful(EXPLORE, BASE, replace(BASE, failed=30), SLO, 0.01)
    assert harmful(EXPLORE, BASE, replace(BASE, oom=1), SLO, 0.01)


def _generative(ttft_p99: float, tpot_p99: float, preemptions: int = 0, kv: float = 0.5) -> Generation:
    return Generation(
        output_tokens_per_second=900.0,
        prompt_tokens_per_second=400.0,
        ttft_p50=ttft_p99 / 2,
        ttft_p99=ttft_p99,
        tpot_p50=tpot_p99 / 2,
        tpot_p99=tpot_p99,
        preemptions=preemptions,
        running=32.0,
        waiting=0.0,
        kv_cache_usage=kv,
        aborted=0,
        ttft_over=ttft_p99 / 1.0,
        tpot_over=tpot_p99 / 0.05,
    )


def test_a_generative_worker_is_judged_by_ttft_and_tpot_and_harmed_by_preemptions_or_a_full_kv_cache():
    # Objectives TTFT 1 s, TPOT 50 ms: the tail ratio is the worse of the two p99s over them.
    base = replace(BASE, p99=5.0, tail_ratio=0.8, generation=_generative(0.8, 0.03))
    assert not harmful(EXPLORE, base, base, SLO, 0.01), "an end-to-end p99 over the request SLO is not an LLM's objective"
    slow_tokens = replace(base, tail_ratio=1.4, generation=_generative(0.8, 0.07))
    assert harmful(EXPLORE, base, slow_tokens, SLO, 0.01) == "TTFT p99 800.0 ms, TPOT p99 70.0 ms breaks the objectives"
    verdict = judge(EXPLORE, base, MARGINS, replace(slow_tokens, goodput=900.0), SLO)
    assert not verdict.keep and "TPOT p99 70.0 ms" in verdict.why
    preempted = replace(base, generation=_generative(0.8, 0.03, preemptions=12))
    assert harmful(EXPLORE, base, preempted, SLO, 0.01) == "12 sequences preempted"
    full = replace(base, generation=_generative(0.8, 0.03, kv=0.99))
    assert harmful(EXPLORE, base, full, SLO, 0.01) == "the KV cache is 99% full"
    assert judge(EXPLORE, base, MARGINS, replace(base, goodput=600.0), SLO).keep


def test_goodput_per_watt_judges_efficiency_within_the_slo_and_throughput_under_overload():
    margins = {**MARGINS, "goodput_per_watt": 0.03}
    powered = replace(BASE, watts=250.0)
    assert powered.goodput_per_watt == 490.0 / 250.0 and powered.joules_per_request == 0.5
    # Same goodput for 20% less power: kept on efficiency, where the goodput objective would not.
    frugal = replace(powered, watts=200.0)
    kept = judge(EXPLORE, powered, margins, frugal, SLO, "goodput_per_watt")
    assert kept.keep and kept.evidence.metric == "goodput_per_watt"
    assert not judge(EXPLORE, powered, margins, frugal, SLO, "goodput").keep
    # 10% more goodput for 30% more power: goodput takes it, per watt does not.
    hungry = replace(powered, goodput=539.0, throughput=550.0, watts=325.0)
    assert judge(EXPLORE, powered, margins, hungry, SLO).keep
    refused = judge(EXPLORE, powered, margins, hungry, SLO, "goodput_per_watt")
    assert not refused.keep and "/J" in refused.why
    # Overloaded, efficiency waits: the queue is drained by throughput.
    overloaded = replace(powered, goodput=100.0)
    assert objective(overloaded, "goodput_per_watt") == "throughput"
    # Without an energy reading (a CPU worker, MIG), goodput per watt is judged by goodput.
    assert objective(BASE, "goodput_per_watt") == "goodput"
    assert objective(powered, "goodput_per_watt", replace(powered, watts=None)) == "goodput"
