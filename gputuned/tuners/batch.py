"""max_batch_size: grow while batches fill, back off multiplicatively when it hurts.

Clipper's AIMD adapted to a guarded hill climb: double while batches come out full
(there are requests to merge), halve on an out-of-memory event or on an SLO breach that
the batch itself causes (its compute takes a large share of the SLO and of the p99:
little of the latency is queueing), and step down by
a quarter while the worker GPU's PCIe link is over 80% busy (bigger batches only queue
behind the copy). A breach caused by queueing (the batch is quick, requests wait) is
answered by growing the batch instead: more throughput is what drains a queue.
The climb doubles only where the doubled batch fills at once (enough requests wait, or
the queue delay already covers the fill); where it would not, BatchFillTuner, asked
after the lanes and the queue delay, moves the batch and the delay together.

Where doubling was tried and did not pay although more items wait than it took,
BatchJumpTuner, asked after the lanes, jumps once to the batch that takes them all (a
trough at twice the size). The climb only goes up, so BatchDownProbe, asked last, probes
down: when nothing else has a move (doubling was tried and reverted, or batches no longer
come out full) and the batches are bigger than half the maximum (so half would bind), it
tries half. The best batch moves down when lanes or threads change: two lanes on two
cores each run a batch with half the cache, and with a maximum of 16 for 32 clients one
lane takes 16 while the other waits. A climb that got there with one lane cannot see that.
"""

from __future__ import annotations

import math
from dataclasses import replace

from gputuned.knobs import MAX_BATCH_SIZE, STREAMS
from gputuned.tuners.base import Proposal, TunerInput, changed
from gputuned.tuners.queue_delay import KNOB as DELAY_KNOB
from gputuned.tuners.queue_delay import fill_delay_us

KNOB = MAX_BATCH_SIZE.name
FULL = 0.75  # batches this full (of the maximum) mean more requests were waiting
PCIE_LIMIT = 0.8
SKIP_LIMIT = 8  # a jump past a doubling that did not pay goes at most this many times further
SLO_SHARE = 0.25  # a batch taking more than this share of the SLO is itself the problem...
COMPUTE_SHARE_OF_P99 = 1 / 3  # ...when it is also this share of the p99 (else the queue is)


class BatchTuner:
    name = "batch"

    def propose(self, inp: TunerInput) -> Proposal | None:
        if KNOB not in inp.knobs:
            return None
        backoff = _backoff(inp)
        if backoff is not None:
            return changed(inp, KNOB, *backoff, "backoff")
        if not _grows(inp):
            return None
        size = inp.knobs[KNOB]
        if (KNOB, size, 1) not in inp.no_gain and _doubling_fills(inp, size):
            return changed(inp, KNOB, size * 2, f"batches {inp.window.mean_batch:.1f}/{size} full: try {size * 2}")
        return None


def _backoff(inp: TunerInput) -> tuple[int, str] | None:
    """The smaller batch, and why, when out-of-memory events, a breach the batch itself
    causes, or a saturated PCIe link call for one (see the module docstring); None when
    none does. Called for even where the batch cannot go lower: nothing grows then."""
    size, window = inp.knobs[KNOB], inp.window
    if window.oom:
        return size // 2, f"{window.oom} out-of-memory events at {size}: halve"
    if batch_causes_breach(inp):
        p99_ms, slo_ms = (window.p99 or 0.0) * 1000, inp.slo_seconds * 1000
        batch_ms = (window.batch_seconds or 0.0) * 1000
        return size // 2, f"p99 {p99_ms:.1f} ms over the {slo_ms:.0f} ms SLO with {batch_ms:.1f} ms batches: halve"
    if window.pcie_utilization is not None and window.pcie_utilization > PCIE_LIMIT:
        return size - max(size // 4, 1), f"PCIe {window.pcie_utilization:.0%} busy (over {PCIE_LIMIT:.0%}): step down"
    return None


def batch_causes_breach(inp: TunerInput) -> bool:
    """Whether the window breaches the SLO because of the batch itself: its compute takes a
    large share of the SLO and of the p99, so little of the latency is queueing."""
    window = inp.window
    batch_seconds = window.batch_seconds or 0.0
    compute_bound = batch_seconds > SLO_SHARE * inp.slo_seconds and COMPUTE_SHARE_OF_P99 * (window.p99 or 0.0) <= batch_seconds
    return inp.slo_breached() and compute_bound


def _grows(inp: TunerInput) -> bool:
    """Whether a bigger batch may pay: the worker serves and its batches come out full."""
    window = inp.window
    return window.throughput > 0 and window.mean_batch >= FULL * inp.knobs[KNOB]


class BatchJumpTuner:
    """The batch that takes every waiting item, up to SKIP_LIMIT times the current one, after
    doubling was tried and did not pay while more waited than it took.

    The gain of a batch is not always monotonic in its size: on a CPU a batch of 2 can cost
    more per item than one of 1 (a kernel choice, the split and merge), while one of 8
    amortises the per-batch work over all eight. A climb that stops at the first
    step that does not pay never sees that; one jump to the batch that takes the whole
    queue does, once (the guard remembers it apart from the step).

    Asked after the lanes: the jump is a guess at a landscape that is not monotonic, a
    second lane while the lanes are saturated is the usual move. Where the lane pays and
    the batch does not, the jump would spend a trial first, on a server whose every trial
    is a model reload (on Triton's Python backend a second instance can pay where a bigger
    batch at one instance loses)."""

    name = "batch_jump"

    def propose(self, inp: TunerInput) -> Proposal | None:
        if KNOB not in inp.knobs or _backoff(inp) is not None or not _grows(inp):
            return None
        size = inp.knobs[KNOB]
        if (KNOB, size, 1) not in inp.no_gain:
            return None
        waiting = _waiting(inp, size)
        if waiting < 2 * size:
            return None
        target = min(1 << math.ceil(math.log2(size + waiting)), SKIP_LIMIT * size)
        if target < 4 * size:
            return None
        proposal = changed(
            inp,
            KNOB,
            target,
            f"{2 * size} was no better, {waiting:.1f} items wait behind batches of {size}: try {target}, past it",
        )
        return None if proposal is None else replace(proposal, past=True)


def _waiting(inp: TunerInput, size: int) -> float:
    """Items a lane finds when it frees: those in the worker less those the running batches hold."""
    return inp.window.in_system * max(inp.window.items_per_request, 1.0) - inp.knobs.get(STREAMS.name, 1) * size


def _doubling_fills(inp: TunerInput, size: int) -> bool:
    """Whether a batch of twice `size` comes out full without waiting longer than the queue
    delay already does: enough requests wait, or the delay already covers the fill, or
    there is no delay to set (a server without that knob)."""
    if DELAY_KNOB not in inp.knobs:
        return True
    return _waiting(inp, size) >= 2 * size or inp.knobs[DELAY_KNOB] >= fill_delay_us(inp, 2 * size)


class BatchFillTuner:
    """Twice the batch together with the queue delay that fills it.

    When the queue is too short to fill the doubled batch at once (few clients, quick
    batches), either move alone changes nothing: a bigger maximum goes out as small as
    before, and a wait for a batch that already comes out full gains nothing. Together
    they pay where a batch costs about the same whatever its size (a GPU's launch and
    copy latency). Asked after the lanes and the queue delay: where a second lane can
    take the waiting requests instead, that is tried first (on a CPU a bigger batch on
    one lane can beat the batch it came from and still lose to two lanes of it, and a
    kept move is not undone). With no request waiting at all (a few clients, all in the
    running batches), a bigger batch has nothing to gather, however long it waits."""

    name = "batch_fill"

    def propose(self, inp: TunerInput) -> Proposal | None:
        if KNOB not in inp.knobs or DELAY_KNOB not in inp.knobs or inp.slo_breached():
            return None
        size, window = inp.knobs[KNOB], inp.window
        if not _grows(inp) or _doubling_fills(inp, size):
            return None
        waiting = _waiting(inp, size)
        proposal = changed(inp, KNOB, size * 2, "")
        if proposal is None or waiting <= 0:
            return None
        delay = inp.clamp(DELAY_KNOB, fill_delay_us(inp, proposal.value))
        return Proposal(
            KNOB,
            proposal.value,
            f"batches {window.mean_batch:.1f}/{size} full, {waiting:.1f} items waiting behind the running ones: "
            f"try {proposal.value}, waiting up to {delay} us to fill it",
            also={DELAY_KNOB: delay},
        )


class BatchDownProbe:
    """Half the batch, as an explore move that wins ties (kept unless goodput falls: at the
    same goodput the smaller batch answers sooner and holds less memory). With the usual
    margin to beat, a plateau keeps the bigger batch where the smaller serves a few percent
    more: two points of a plateau differ by less than the margin, so the first one reached
    stays, though the smaller answers sooner.

    Asked in two places. Last of all, so that it gets a turn only when no other tuner has
    a move. And, as `BatchDownProbe(several_lanes=True)`, right after the lanes, where
    it moves only with more than one lane: the batch tuner is asked before the lanes, so
    such a batch was always chosen with fewer lanes than run it now, and the best batch
    moves down when lanes are added (see the module docstring). Asked last, that probe
    waits behind the queue-delay, pool and scheduling trials, which can take the whole
    tuning time, so the smaller batch that the second lane made better would go untried.

    The guard's memory of directions that did not pay (and of kept changes' undoing)
    keeps either to once per landscape: during the climb, each kept doubling rules out
    halving it again until another knob's change is kept."""

    def __init__(self, several_lanes: bool = False) -> None:
        self.name = "batch_down_lanes" if several_lanes else "batch_down"
        self._min_lanes = 2 if several_lanes else 1

    def propose(self, inp: TunerInput) -> Proposal | None:
        if KNOB not in inp.knobs or inp.slo_breached():  # a breach is the batch tuner's to answer
            return None
        if inp.knobs.get(STREAMS.name, 1) < self._min_lanes:
            return None
        size, window = inp.knobs[KNOB], inp.window
        if window.throughput <= 0 or window.mean_batch <= size / 2:
            return None
        proposal = changed(inp, KNOB, size // 2, f"batches of {window.mean_batch:.1f} at a maximum of {size}: probe {size // 2}")
        return None if proposal is None else replace(proposal, wins_ties=True)
