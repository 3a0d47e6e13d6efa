"""Tuners DECIDE and never do I/O: a measured window and the current knobs in, a proposal out.

The guard (`guard.py`) is the only part that acts on a proposal.
"""

from __future__ import annotations

from gputuned.tuners.admission import AdmissionDownProbe, AdmissionTuner, TokenBudgetTuner
from gputuned.tuners.base import Tuner
from gputuned.tuners.batch import BatchDownProbe, BatchFillTuner, BatchJumpTuner, BatchTuner
from gputuned.tuners.pool import PoolTuner
from gputuned.tuners.queue_delay import QueueDelayTuner
from gputuned.tuners.scheduling import SchedulingBackoff, SchedulingTuner
from gputuned.tuners.streams import StreamsTuner
from gputuned.tuners.threads import ThreadsTuner
from gputuned.tuners.tokens import BatchTokensTuner, LengthBucketTuner


def default_tuners() -> list[Tuner]:
    """In the order the guard asks them: the threads' scheduling policy first when p99
    breaches the SLO with it on (another process competing for the worker's cores would
    show so), then batch (it also answers SLO breaches and OOM), then how the cores and
    lanes are shared (with half the batch right after a lane is added), then the jump past a
    doubling that did not pay, then the queue delay, then a bigger batch with the wait that
    fills it, then the width of a variable-length model's length buckets, then the pool, then
    the scheduling policy, and last the probe for a smaller batch (a move for when nobody has
    a better one). A variable-length model's token budget climbs right after its item cap
    (tokens.py). An LLM server's scheduler has tuners of
    its own (admission.py): the cap and the step budget, and last the probe for a smaller cap."""
    return [
        SchedulingBackoff(),
        AdmissionTuner(),
        TokenBudgetTuner(),
        BatchTuner(),
        BatchTokensTuner(),
        ThreadsTuner(),
        StreamsTuner(),
        BatchDownProbe(several_lanes=True),
        BatchJumpTuner(),
        QueueDelayTuner(),
        BatchFillTuner(),
        LengthBucketTuner(),
        PoolTuner(),
        SchedulingTuner(),
        BatchDownProbe(),
        AdmissionDownProbe(),
    ]
