"""streams: add a lane while the lanes are saturated and the device has room; drop idle ones.

A lane busy nearly all the time means batches wait for a lane; another lane helps if the
device (GPU utilisation on CUDA) is not saturated. On the CPU lanes share the cores, so
there are never more lanes than cores, a lane change carries intra_op_threads =
cores // lanes with it (one change, tried together), and the guard's trial decides.
Lanes that are mostly idle are removed (the least resources that meet the SLO).
"""

from __future__ import annotations

from dataclasses import replace

from gputuned.knobs import INTRA_OP_THREADS, STREAMS
from gputuned.tuners.base import Proposal, TunerInput, changed
from gputuned.tuners.batch import FULL
from gputuned.tuners.batch import KNOB as BATCH_KNOB

KNOB = STREAMS.name
THREADS = INTRA_OP_THREADS.name
SATURATED = 0.6  # busy this share of the time: another lane may overlap work; the trial decides
IDLE = 0.35
DEVICE_SATURATED = 0.95


def with_threads(inp: TunerInput, proposal: Proposal | None) -> Proposal | None:
    """On the CPU, the lane change brings the thread count that shares the cores among lanes."""
    if proposal is None or inp.device != "cpu" or THREADS not in inp.knobs:
        return proposal
    threads = inp.clamp(THREADS, max(inp.cores // proposal.value, 1))
    if threads == inp.knobs[THREADS]:
        return proposal
    also = {**proposal.also, THREADS: threads}
    return replace(proposal, also=also, reason=f"{proposal.reason}, with {threads} thread(s) per lane")


class StreamsTuner:
    name = "streams"

    def propose(self, inp: TunerInput) -> Proposal | None:
        if KNOB not in inp.knobs:
            return None
        lanes, window = inp.knobs[KNOB], inp.window
        if lanes > 1 and window.busy_ratio < IDLE:
            return with_threads(
                inp, changed(inp, KNOB, lanes - 1, f"lanes busy {window.busy_ratio:.0%} of the time: drop one", "shrink")
            )
        device_full = inp.device == "cuda" and window.device_busy is not None and window.device_busy >= DEVICE_SATURATED
        cores_full = inp.device == "cpu" and lanes >= inp.cores  # another lane would only contend for a core
        if window.busy_ratio >= SATURATED and not device_full and not cores_full:
            if (KNOB, lanes, 1) in inp.no_gain:
                return _lane_with_half_the_batch(inp, lanes)
            return with_threads(inp, changed(inp, KNOB, lanes + 1, f"lanes busy {window.busy_ratio:.0%} of the time: add one"))
        return None


def _lane_with_half_the_batch(inp: TunerInput, lanes: int) -> Proposal | None:
    """Another lane with half the batch, after a lane alone held the SLO but gained nothing.

    Lanes and the batch are coupled: a second lane at the same maximum doubles the items in
    flight (on a CPU, twice the cache and the cores' share per batch), which can cost what
    the overlap gains. The items in flight stay the same with half the batch per lane, the
    point a climb that reached its batch with one lane cannot see (on a CPU a big batch at
    one lane can serve well under half of it at two). Only while batches fill the maximum
    (so half of it binds)."""
    size, window = inp.knobs.get(BATCH_KNOB), inp.window
    if size is None or size < 2 or window.mean_batch < FULL * size:
        return None
    proposal = changed(inp, KNOB, lanes + 1, "")
    if proposal is None:
        return None
    half = inp.clamp(BATCH_KNOB, size // 2)
    reason = f"{lanes + 1} lanes at batches of {size} gained nothing: try {lanes + 1} lanes at {half}, as many items in flight"
    return with_threads(inp, replace(proposal, reason=reason, also={BATCH_KNOB: half}, past=True))
