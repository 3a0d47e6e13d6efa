"""sched_batch: try the worker's threads under SCHED_BATCH; give it back on an SLO breach.

Under SCHED_BATCH the worker's event loop and lanes hand batches to each other without
preempting, which saves a quarter of a request's CPU at batch 1, but a woken worker
thread also stops preempting other processes on its core (worker/scheduling.py). Whether
that pays depends on the host: trying it is an exploration the guard keeps only if
goodput within the SLO rises, asked for once nothing else has a move; and when p99
breaches the SLO with it on, turning it off is the first answer, before the batch backs
off.
"""

from __future__ import annotations

from gputuned.knobs import SCHED_BATCH
from gputuned.tuners.base import Proposal, TunerInput, changed

KNOB = SCHED_BATCH.name


class SchedulingTuner:
    name = "scheduling"

    def propose(self, inp: TunerInput) -> Proposal | None:
        if KNOB not in inp.knobs or inp.slo_breached():
            return None
        return changed(inp, KNOB, 1, "hand batches between the worker's threads without preempting")


class SchedulingBackoff:
    name = "scheduling_backoff"

    def propose(self, inp: TunerInput) -> Proposal | None:
        if KNOB not in inp.knobs or not inp.slo_breached():
            return None
        return changed(inp, KNOB, 0, "p99 over the SLO: the worker's threads preempt on waking again", "backoff")
