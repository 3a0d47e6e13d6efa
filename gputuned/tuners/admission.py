"""An LLM server's scheduler: the admission cap and the step token budget (vLLM's live knobs).

The trade-off both control: more sequences at once (a higher cap) and bigger steps (a
higher budget) raise throughput, but every running sequence waits for every step, so the
time per output token (TPOT) grows with them; fewer and smaller lower TPOT but leave
requests waiting longer for their first token (TTFT). Goodput counts the requests within
both objectives, so the best point is inside the range, and moves with the traffic.

- AdmissionTuner answers a breach first: TPOT over its objective (the running batch is
  too big) halves the cap to what runs now; TTFT over its objective while TPOT has room
  (requests queue for admission) doubles it. Without a breach it doubles the cap while it
  binds (nearly as many run as it allows, and more wait), unless the KV cache is nearly
  full (more would be preempted).
- TokenBudgetTuner: a step's budget holds the running sequences' next tokens and chunks of
  the waiting prompts. TPOT over its objective while prompts are being filled in halves it
  (a smaller chunk per step delays the decodes less); TTFT over its objective while TPOT has
  room doubles it. Never below the cap (a token for each running sequence).
- AdmissionDownProbe, asked last, when nobody has a better move: halves the cap where
  half would bind (at least that many run), a tie going to the smaller cap (the same
  goodput with fewer sequences keeps TPOT and the KV cache lower). The climb only goes up;
  this is how the cap finds an optimum below the load's concurrency.

Every move is a trial the guard judges on goodput; these only say where to look.
"""

from __future__ import annotations

from dataclasses import replace

from gputuned.knobs import MAX_NUM_ACTIVE_SEQS, MAX_NUM_SCHEDULED_TOKENS
from gputuned.performance import Generation, format_ms
from gputuned.tuners.base import Proposal, TunerInput, changed

CAP = MAX_NUM_ACTIVE_SEQS.name
BUDGET = MAX_NUM_SCHEDULED_TOKENS.name
BINDS = 0.75  # this share of the cap running: the cap is what holds more back
KV_NEARLY_FULL = 0.9


def _breach(generation: Generation) -> str:
    """ "tpot" or "ttft": the objective breached worse; "" when neither is."""
    ttft, tpot = generation.ttft_over or 0.0, generation.tpot_over or 0.0
    if max(ttft, tpot) <= 1:
        return ""
    return "tpot" if tpot >= ttft else "ttft"


def _room(generation: Generation) -> bool:
    """Whether TPOT has room under its objective for bigger steps."""
    return (generation.tpot_over or 0.0) < 1


class AdmissionTuner:
    name = "admission"

    def propose(self, inp: TunerInput) -> Proposal | None:
        generation = inp.window.generation
        if CAP not in inp.knobs or generation is None:
            return None
        cap, waiting, running = inp.knobs[CAP], generation.waiting, generation.running
        breach = _breach(generation)
        if breach == "tpot" and running > 1:
            target = max(int(min(cap, running)) // 2, 1)
            reason = f"TPOT p99 {format_ms(generation.tpot_p99)} over its objective with {running:.0f} running: halve the cap"
            return changed(inp, CAP, target, reason, "backoff")
        full = generation.kv_cache_usage >= KV_NEARLY_FULL
        binds = waiting > 0 and running >= BINDS * cap
        if breach == "ttft" and _room(generation) and binds and not full:
            reason = f"TTFT p99 {format_ms(generation.ttft_p99)} over its objective, {waiting:.0f} waiting: double the cap"
            return changed(inp, CAP, cap * 2, reason, "backoff")
        if breach or full or not binds or (CAP, cap, 1) in inp.no_gain:
            return None
        return changed(inp, CAP, cap * 2, f"{running:.0f} running at a cap of {cap}, {waiting:.0f} waiting: try {cap * 2}")


class TokenBudgetTuner:
    name = "token_budget"

    def propose(self, inp: TunerInput) -> Proposal | None:
        generation = inp.window.generation
        if BUDGET not in inp.knobs or generation is None:
            return None
        budget, floor = inp.knobs[BUDGET], inp.knobs.get(CAP, 1)
        breach = _breach(generation)
        prefilling = generation.prompt_tokens_per_second > 0
        if breach == "tpot" and prefilling and budget // 2 >= floor:
            reason = f"TPOT p99 {format_ms(generation.tpot_p99)} over its objective while prompts fill in: halve the step budget"
            return changed(inp, BUDGET, budget // 2, reason, "backoff")
        if breach == "ttft" and _room(generation) and generation.waiting > 0:
            reason = f"TTFT p99 {format_ms(generation.ttft_p99)} over its objective with TPOT to spare: double the step budget"
            return changed(inp, BUDGET, budget * 2, reason, "backoff")
        return None


class AdmissionDownProbe:
    name = "admission_probe"

    def propose(self, inp: TunerInput) -> Proposal | None:
        generation = inp.window.generation
        if CAP not in inp.knobs or generation is None or _breach(generation):
            return None
        cap, running = inp.knobs[CAP], generation.running
        half = max(int(min(cap, running)) // 2, 1)
        if half >= cap or running < 2 or (CAP, cap, -1) in inp.no_gain:
            return None
        proposal = changed(inp, CAP, half, f"{running:.0f} running at a cap of {cap}: probe {half}")
        return None if proposal is None else replace(proposal, wins_ties=True)
