"""max_batch_size: grow while batches fill, back off multiplicatively when it hurts.

Clipper's AIMD adapted to a guarded hill climb: double while batches come out full
(there are requests to merge), halve on an out-of-memory event or on an SLO breach that
the batch itself causes (its compute takes a large share of the SLO and of the p99:
little of the latency is queueing), and step down by
a quarter while the worker GPU's PCIe link is over 80% busy (bigger batches only queue
behind the copy). A breach caused by queueing (the batch is quick, requests wait) is
answered by growing the batch instead: more throughput is what drains a queue.
When the queue is too short to fill the doubled batch at once (few clients, quick
batches), the doubling carries the queue delay that fills it: either alone changes
nothing (a bigger maximum goes out half empty; a wait for a batch that is already full).

The climb only goes up, so a second tuner, asked last, probes down: when nothing else
has a move (doubling was tried and reverted, or batches no longer come out full) and the
batches are bigger than half the maximum (so half would bind), it tries half. The best
batch moves down when lanes or threads change: two lanes on two cores each run a batch
with half the cache, and with a maximum of 16 for 32 clients one lane takes 16 while the
other waits. A climb that got there with one lane cannot see that.
"""

from __future__ import annotations

from gputuned.tuners.base import Proposal, TunerInput, changed
from gputuned.tuners.queue_delay import KNOB as DELAY_KNOB
from gputuned.tuners.queue_delay import fill_delay_us

KNOB = "max_batch_size"
FULL = 0.75  # batches this full (of the maximum) mean more requests were waiting
PCIE_LIMIT = 0.8
SLO_SHARE = 0.25  # a batch taking more than this share of the SLO is itself the problem...
COMPUTE_SHARE_OF_P99 = 1 / 3  # ...when it is also this share of the p99 (else the queue is)


class BatchTuner:
    name = "batch"

    def propose(self, inp: TunerInput) -> Proposal | None:
        if KNOB not in inp.knobs:
            return None
        size, window = inp.knobs[KNOB], inp.window
        if window.oom:
            return changed(inp, KNOB, size // 2, f"{window.oom} out-of-memory events at {size}: halve", "backoff")
        batch_seconds = window.batch_seconds or 0.0
        compute_bound = (
            batch_seconds > SLO_SHARE * inp.slo_seconds and COMPUTE_SHARE_OF_P99 * (window.p99 or 0.0) <= batch_seconds
        )
        if inp.slo_breached() and compute_bound:
            return changed(
                inp,
                KNOB,
                size // 2,
                f"p99 {(window.p99 or 0.0) * 1000:.1f} ms over the {inp.slo_seconds * 1000:.0f} ms SLO with "
                f"{(window.batch_seconds or 0) * 1000:.1f} ms batches: halve",
                "backoff",
            )
        if window.pcie_utilization is not None and window.pcie_utilization > PCIE_LIMIT:
            return changed(
                inp,
                KNOB,
                size - max(size // 4, 1),
                f"PCIe {window.pcie_utilization:.0%} busy (over {PCIE_LIMIT:.0%}): step down",
                "backoff",
            )
        if window.throughput > 0 and window.mean_batch >= FULL * size:
            return _doubled(inp, size, f"batches {window.mean_batch:.1f}/{size} full: try {size * 2}")
        return None


def _doubled(inp: TunerInput, size: int, reason: str) -> Proposal | None:
    """Twice the batch; with the queue delay it takes to fill when the queue alone cannot.

    While `streams` batches of `size` run, the requests left waiting (those in the worker
    less those being computed) are all a lane finds when it frees. Fewer than twice the
    batch, and without a wait the doubled batch goes out as small as before (a change
    that changes nothing, judged as no gain): the wait to fill it moves with it. None
    waiting at all (a few clients, all in the running batches): a bigger batch has
    nothing to gather, however long it waits."""
    proposal = changed(inp, KNOB, size * 2, reason)
    if proposal is None or DELAY_KNOB not in inp.knobs:
        return proposal
    waiting = inp.window.in_system - inp.knobs.get("streams", 1) * size
    if waiting <= 0:
        return None
    delay = fill_delay_us(inp, proposal.value)
    if waiting >= proposal.value or delay <= inp.knobs[DELAY_KNOB]:
        return proposal
    delay = inp.clamp(DELAY_KNOB, delay)
    return Proposal(
        KNOB,
        proposal.value,
        f"{reason}, waiting up to {delay} us to fill it ({waiting:.1f} requests queue behind the running batches)",
        also={DELAY_KNOB: delay},
    )


class BatchDownProbe:
    """Half the batch, as an explore move (kept only if goodput rises beyond the noise).

    Asked after every other tuner, so it only gets a turn when nothing else has a move; the
    guard's memory of directions that did not pay keeps it to once per landscape."""

    name = "batch_down"

    def propose(self, inp: TunerInput) -> Proposal | None:
        if KNOB not in inp.knobs or inp.slo_breached():  # a breach is the batch tuner's to answer
            return None
        size, window = inp.knobs[KNOB], inp.window
        if window.throughput > 0 and window.mean_batch > size / 2:
            return changed(inp, KNOB, size // 2, f"batches of {window.mean_batch:.1f} at a maximum of {size}: probe {size // 2}")
        return None
