"""streams: add a lane while the lanes are saturated and the device has room; drop idle ones.

A lane busy nearly all the time means batches wait for a lane; another lane helps if the
device (GPU utilisation on CUDA) is not saturated. On the CPU lanes share the cores, so
there are never more lanes than cores, a lane change carries intra_op_threads =
cores // lanes with it (one change, tried together), and the guard's trial decides.
Lanes that are mostly idle are removed (the least resources that meet the SLO).
"""

from __future__ import annotations

from dataclasses import replace

from gputuned.tuners.base import Proposal, TunerInput, changed

KNOB = "streams"
SATURATED = 0.6  # busy this share of the time: another lane may overlap work; the trial decides
IDLE = 0.35
DEVICE_SATURATED = 0.95


def with_threads(inp: TunerInput, proposal: Proposal | None) -> Proposal | None:
    """On the CPU, the lane change brings the thread count that shares the cores among lanes."""
    if proposal is None or inp.device != "cpu" or "intra_op_threads" not in inp.knobs:
        return proposal
    threads = inp.clamp("intra_op_threads", max(inp.cores // proposal.value, 1))
    if threads == inp.knobs["intra_op_threads"]:
        return proposal
    return replace(proposal, also={"intra_op_threads": threads}, reason=f"{proposal.reason}, with {threads} thread(s) per lane")


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
            return with_threads(inp, changed(inp, KNOB, lanes + 1, f"lanes busy {window.busy_ratio:.0%} of the time: add one"))
        return None
