"""intra_op_threads (CPU): share the cores between the lanes.

Each lane runs its batch on `intra_op_threads` threads; lanes x threads above the cores
oversubscribes them and below leaves cores idle, so the target is cores // lanes. The
guard's trial keeps it only if it helps.
"""

from __future__ import annotations

from gputuned.knobs import INTRA_OP_THREADS, STREAMS
from gputuned.tuners.base import Proposal, TunerInput, changed

KNOB = INTRA_OP_THREADS.name


class ThreadsTuner:
    name = "threads"

    def propose(self, inp: TunerInput) -> Proposal | None:
        if KNOB not in inp.knobs or inp.device != "cpu":
            return None
        lanes = inp.knobs.get(STREAMS.name, 1)
        target = max(inp.cores // max(lanes, 1), 1)
        return changed(inp, KNOB, target, f"{inp.cores} cores over {lanes} lane(s): {target} thread(s) each")
