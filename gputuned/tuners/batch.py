"""max_batch_size: grow while batches fill, back off multiplicatively when it hurts.

Clipper's AIMD adapted to a guarded hill climb: double while batches come out full
(there are requests to merge), halve on an out-of-memory event or on an SLO breach that
the batch itself causes (its compute takes a large share of the SLO and of the p99:
little of the latency is queueing), and step down by
a quarter while the worker GPU's PCIe link is over 80% busy (bigger batches only queue
behind the copy). A breach caused by queueing (the batch is quick, requests wait) is
answered by growing the batch instead: more throughput is what drains a queue.
"""

from __future__ import annotations

from gputuned.tuners.base import Proposal, TunerInput, changed

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
        compute_bound = batch_seconds > SLO_SHARE * inp.slo_seconds and COMPUTE_SHARE_OF_P99 * (window.p99 or 0.0) <= batch_seconds
        if inp.slo_breached() and compute_bound:
            return changed(inp, KNOB, size // 2,
                           f"p99 {window.p99 * 1000:.1f} ms over the {inp.slo_seconds * 1000:.0f} ms SLO with "
                           f"{(window.batch_seconds or 0) * 1000:.1f} ms batches: halve", "backoff")
        if window.pcie_utilization is not None and window.pcie_utilization > PCIE_LIMIT:
            return changed(inp, KNOB, size - max(size // 4, 1),
                           f"PCIe {window.pcie_utilization:.0%} busy (over {PCIE_LIMIT:.0%}): step down", "backoff")
        if window.throughput > 0 and window.mean_batch >= FULL * size:
            return changed(inp, KNOB, size * 2, f"batches {window.mean_batch:.1f}/{size} full: try {size * 2}")
        return None
