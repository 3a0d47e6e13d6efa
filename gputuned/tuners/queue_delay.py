"""max_queue_delay_us: about the time a batch takes to fill, within the SLO's slack.

At the measured arrival rate, max_batch_size - 1 more requests take (b - 1) / rate to
arrive; waiting longer gains nothing, waiting less leaves batches half full. The wait is
capped by the part of the SLO that compute does not use (half of it, leaving room for
queueing), and only changed when the target differs enough to matter.
"""

from __future__ import annotations

from gputuned.knobs import MAX_BATCH_SIZE, MAX_QUEUE_DELAY_US
from gputuned.tuners.base import Proposal, ProposalKind, TunerInput, changed

KNOB = MAX_QUEUE_DELAY_US.name
BATCH = MAX_BATCH_SIZE.name
MIN_CHANGE_US = 200
MIN_CHANGE_RATIO = 0.3


def fill_delay_us(inp: TunerInput, size: int) -> int:
    """The wait for a batch of `size` items to fill at the measured arrival rate (requests
    carrying `items_per_request` items each), within the SLO's slack."""
    window = inp.window
    if size <= 1 or window.arrival_rate <= 0:
        return 0
    fill = (size - 1) / (window.arrival_rate * max(window.items_per_request, 1.0))
    slack = max(inp.slo_seconds - 2 * (window.batch_seconds or 0.0), 0.0) / 2
    return int(min(fill, slack) * 1e6)


class QueueDelayTuner:
    name = "queue_delay"

    def propose(self, inp: TunerInput) -> Proposal | None:
        if KNOB not in inp.knobs or BATCH not in inp.knobs:
            return None
        window, size, current = inp.window, inp.knobs[BATCH], inp.knobs[KNOB]
        target = fill_delay_us(inp, size)
        if abs(target - current) < max(MIN_CHANGE_US, MIN_CHANGE_RATIO * current):
            return None
        kind: ProposalKind = "shrink" if target < current else "explore"
        return changed(
            inp, KNOB, target, f"a batch of {size} fills in about {target} us at {window.arrival_rate:.0f} req/s", kind
        )
