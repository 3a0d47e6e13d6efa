"""A variable-length model's batches: the token budget and the width of the length buckets.

A batch of such a model is bounded by its items (`max_batch_size`, the batch tuner's) and
by the tokens it computes, padding included (`max_batch_tokens`): with long requests the
budget binds first, and the item cap never comes out full, so the batch tuner would stop
climbing where the budget holds the batch back.

- BatchTokensTuner does for the budget what the batch tuner does for items: halve it on an
  out-of-memory event or on an SLO breach the batch itself causes (its compute takes a
  large share of the SLO and of the p99); double it while batches come out full in tokens
  and the tokens waiting would fill the doubled budget.
- LengthBucketTuner weighs padding against filling. Requests wait in buckets of lengths,
  and a batch, padded to its longest, takes one bucket: narrower buckets compute less
  padding but fill batches more slowly. Where padding is over PADDING_HIGH of the tokens
  computed, it halves the width; where batches come out well short of both limits while
  requests wait and padding is low, it doubles it (more of the waiting requests may join).

Every move is a trial the guard judges on goodput; these only say where to look.
"""

from __future__ import annotations

from gputuned.knobs import LENGTH_BUCKET, MAX_BATCH_SIZE, MAX_BATCH_TOKENS, STREAMS
from gputuned.tuners.base import Proposal, TunerInput, changed
from gputuned.tuners.batch import batch_causes_breach

BUDGET = MAX_BATCH_TOKENS.name
WIDTH = LENGTH_BUCKET.name
FULL = 0.75  # batches this full (of the budget) mean more tokens were waiting
SHORT = 0.5  # batches under this share of both limits come out short
PADDING_HIGH = 0.15  # padding over this share of the tokens computed: narrow the buckets
PADDING_LOW = 0.05  # under this, there is room to widen them


def _waiting_tokens(inp: TunerInput) -> float:
    """Tokens a lane finds when it frees: those in the worker less those the running batches hold."""
    window, tokens = inp.window, inp.window.tokens
    if tokens is None:
        return 0.0
    in_worker = window.in_system * max(window.items_per_request, 1.0) * tokens.per_item
    return in_worker - inp.knobs.get(STREAMS.name, 1) * tokens.batch_tokens


class BatchTokensTuner:
    name = "batch_tokens"

    def propose(self, inp: TunerInput) -> Proposal | None:
        tokens, window = inp.window.tokens, inp.window
        if BUDGET not in inp.knobs or tokens is None or window.throughput <= 0:
            return None
        budget = inp.knobs[BUDGET]
        if window.oom:
            return changed(inp, BUDGET, budget // 2, f"{window.oom} out-of-memory events at {budget} tokens: halve", "backoff")
        if batch_causes_breach(inp):
            batch_ms = (window.batch_seconds or 0.0) * 1000
            reason = f"p99 over the SLO with {batch_ms:.1f} ms batches of {tokens.batch_tokens:.0f} tokens: halve"
            return changed(inp, BUDGET, budget // 2, reason, "backoff")
        if tokens.batch_tokens < FULL * budget or (BUDGET, budget, 1) in inp.no_gain:
            return None
        if _waiting_tokens(inp) < budget:
            return None
        reason = f"batches of {tokens.batch_tokens:.0f} of {budget} tokens, more waiting: try {budget * 2}"
        return changed(inp, BUDGET, budget * 2, reason)


class LengthBucketTuner:
    name = "length_bucket"

    def propose(self, inp: TunerInput) -> Proposal | None:
        tokens, window = inp.window.tokens, inp.window
        if WIDTH not in inp.knobs or tokens is None or window.throughput <= 0 or inp.slo_breached():
            return None
        width = inp.knobs[WIDTH]
        if tokens.padding_share > PADDING_HIGH and (WIDTH, width, -1) not in inp.no_gain:
            reason = f"padding {tokens.padding_share:.0%} of the tokens computed: buckets of {max(width // 2, 1)} tokens"
            return changed(inp, WIDTH, width // 2, reason)
        short = window.mean_batch < SHORT * inp.knobs.get(MAX_BATCH_SIZE.name, 1) and tokens.batch_tokens < SHORT * inp.knobs.get(
            BUDGET, 0
        )
        if short and tokens.padding_share < PADDING_LOW and _waiting_tokens(inp) > 0 and (WIDTH, width, 1) not in inp.no_gain:
            reason = f"batches of {window.mean_batch:.1f} items with {tokens.padding_share:.0%} padding and requests waiting: buckets of {width * 2}"
            return changed(inp, WIDTH, width * 2, reason)
        return None
