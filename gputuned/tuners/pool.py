"""pool_mb: cover the peak batch working set across lanes, with headroom.

One block per lane plus one being filled, each large enough for a full batch: that is
what a batch needs so it never falls back to a fresh (on CUDA: pinned, slow) allocation.
Grow when batches miss the pool; shrink to that size when the pool is much larger, and
to nothing when no request arrives.
"""

from __future__ import annotations

import math

from gputuned.knobs import MAX_BATCH_SIZE, POOL_MB, STREAMS
from gputuned.tuners.base import Proposal, TunerInput, changed

KNOB = POOL_MB.name
HEADROOM = 1.25
MIB = 2**20


def working_set_mb(inp: TunerInput) -> int:
    lanes = inp.knobs.get(STREAMS.name, 1)
    size = inp.knobs.get(MAX_BATCH_SIZE.name, 1)
    return math.ceil(size * inp.item_bytes * (lanes + 1) * HEADROOM / MIB)


class PoolTuner:
    name = "pool"

    def propose(self, inp: TunerInput) -> Proposal | None:
        if KNOB not in inp.knobs or inp.item_bytes <= 0:
            return None
        current, window = inp.knobs[KNOB], inp.window
        if window.arrival_rate == 0:
            return changed(inp, KNOB, 0, "no requests: release the pool", "shrink")
        need = working_set_mb(inp)
        if window.pool_misses > 0 and need > current:
            return changed(
                inp, KNOB, need, f"{window.pool_misses} batches missed the pool: size it for the working set", "neutral"
            )
        if current > 2 * need:
            return changed(inp, KNOB, need, f"pool of {current} MiB is over twice the {need} MiB working set", "shrink")
        return None
