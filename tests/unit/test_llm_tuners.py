"""The LLM scheduler's tuners (admission cap, step token budget) on synthetic windows."""

from __future__ import annotations

from dataclasses import replace

from gputuned.performance import Generation
from gputuned.tuners.admission import AdmissionDownProbe, AdmissionTuner, TokenBudgetTuner
from gputuned.tuners.base import TunerInput
from tests.helpers import settled_window

KNOBS = {"max_num_active_seqs": 64, "max_num_scheduled_tokens": 2048}
BOUNDS = {"max_num_active_seqs": (1, 64), "max_num_scheduled_tokens": (1, 2048)}
CALM = Generation(
    output_tokens_per_second=1000.0,
    prompt_tokens_per_second=500.0,
    ttft_p50=0.1,
    ttft_p99=0.4,
    tpot_p50=0.02,
    tpot_p99=0.03,
    preemptions=0,
    running=32.0,
    waiting=0.0,
    kv_cache_usage=0.3,
    aborted=0,
    ttft_over=0.4,  # objectives: TTFT 1 s, TPOT 50 ms
    tpot_over=0.6,
)


def inp(generation: Generation = CALM, **knobs: int) -> TunerInput:
    window = settled_window(generation=generation, tail_ratio=max(generation.ttft_over or 0, generation.tpot_over or 0))
    return TunerInput(window, {**KNOBS, **knobs}, BOUNDS, 0.1, "cuda", 8, 0)


def test_a_tpot_breach_halves_the_cap_to_half_of_what_runs():
    slow = replace(CALM, tpot_p99=0.08, tpot_over=1.6)
    proposal = AdmissionTuner().propose(inp(slow))
    assert proposal.changes() == {"max_num_active_seqs": 16} and proposal.kind == "backoff"
    assert "TPOT p99 80.0 ms over its objective with 32 running" in proposal.reason


def test_the_cap_doubles_while_it_binds_and_not_when_the_kv_cache_is_nearly_full():
    bound = replace(CALM, running=15.5, waiting=12.0)
    assert AdmissionTuner().propose(inp(bound, max_num_active_seqs=16)).changes() == {"max_num_active_seqs": 32}
    full = replace(bound, kv_cache_usage=0.95)
    assert AdmissionTuner().propose(inp(full, max_num_active_seqs=16)) is None
    assert AdmissionTuner().propose(inp(CALM)) is None, "32 running under a cap of 64: it does not bind"
    queued = replace(bound, ttft_p99=3.0, ttft_over=3.0)
    proposal = AdmissionTuner().propose(inp(queued, max_num_active_seqs=16))
    assert proposal.changes() == {"max_num_active_seqs": 32} and proposal.kind == "backoff"
    tried = inp(bound, max_num_active_seqs=16)
    tried = replace(tried, no_gain=frozenset({("max_num_active_seqs", 16, 1)}))
    assert AdmissionTuner().propose(tried) is None


def test_the_probe_halves_a_cap_that_half_would_bind_and_wins_ties():
    proposal = AdmissionDownProbe().propose(inp(CALM))
    assert proposal.changes() == {"max_num_active_seqs": 16} and proposal.wins_ties
    assert AdmissionDownProbe().propose(inp(replace(CALM, running=1.2))) is None
    assert AdmissionDownProbe().propose(inp(replace(CALM, tpot_over=1.5))) is None, "a breach is the tuner's to answer"


def test_the_step_budget_halves_on_a_tpot_breach_while_prompts_fill_in_and_doubles_on_a_ttft_one():
    slow = replace(CALM, tpot_p99=0.08, tpot_over=1.6)
    assert TokenBudgetTuner().propose(inp(slow)).changes() == {"max_num_scheduled_tokens": 1024}
    assert TokenBudgetTuner().propose(inp(slow, max_num_scheduled_tokens=64, max_num_active_seqs=64)) is None, (
        "never below a token for each sequence the cap admits"
    )
    queued = replace(CALM, ttft_p99=3.0, ttft_over=3.0, waiting=10.0)
    assert TokenBudgetTuner().propose(inp(queued, max_num_scheduled_tokens=512)).changes() == {"max_num_scheduled_tokens": 1024}


def test_a_worker_that_is_not_generative_gets_no_scheduler_proposal():
    plain = TunerInput(settled_window(), KNOBS, BOUNDS, 0.1, "cuda", 8, 0)
    assert all(tuner.propose(plain) is None for tuner in (AdmissionTuner(), TokenBudgetTuner(), AdmissionDownProbe()))
