"""Tuners DECIDE and never do I/O: a measured window and the current knobs in, a proposal out.

The guard (`guard.py`) is the only part that acts on a proposal.
"""

from __future__ import annotations

from gputuned.tuners.base import Tuner
from gputuned.tuners.batch import BatchDownProbe, BatchFillTuner, BatchTuner
from gputuned.tuners.pool import PoolTuner
from gputuned.tuners.queue_delay import QueueDelayTuner
from gputuned.tuners.streams import StreamsTuner
from gputuned.tuners.threads import ThreadsTuner


def default_tuners() -> list[Tuner]:
    """In the order the guard asks them: batch first (it also answers SLO breaches and
    OOM), then how the cores and lanes are shared, then the queue delay, then a bigger
    batch with the wait that fills it, then the pool, and last the probe for a smaller
    batch (a move for when nobody has a better one)."""
    return [
        BatchTuner(),
        ThreadsTuner(),
        StreamsTuner(),
        QueueDelayTuner(),
        BatchFillTuner(),
        PoolTuner(),
        BatchDownProbe(),
    ]
