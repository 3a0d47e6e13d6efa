"""Workload shifts: when the traffic itself changed, so that exploration must start again.

Our own changes move one of two signals, a real shift moves both: in a closed loop
(clients waiting for answers) a better setting raises the arrival rate but not the
requests in the system (the clients); with open-loop traffic it changes how many requests
are inside but not how fast they come. Fewer or more clients, or a slower or faster stream
of requests, move both the same way. So a shift is both signals having moved the same
way, one by more than `threshold` and the other by more than half of it, since the
reference (the baseline of the last change tried: a shift during a trial shows at the next
baseline; while nothing is tried, slow drift adds up). The input size (items per request)
does not depend on our settings: it moving by more than `threshold` is a shift on its own.
"""

from __future__ import annotations

import math

from gputuned.performance import Measurement


def relative_change(before: float, after: float) -> float:
    """(after - before) / before; from zero, any rise is an infinite change."""
    if before <= 0:
        return 0.0 if after <= 0 else math.inf
    return (after - before) / before


class ShiftDetector:
    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.reference: Measurement | None = None

    def check(self, baseline: Measurement) -> str | None:
        """What moved since the reference, or None; the first baseline becomes the reference,
        and so does the baseline of a shift."""
        reference = self.reference
        if reference is None:
            self.reference = baseline
            return None
        threshold = self.threshold
        changes = [relative_change(getattr(reference, name), getattr(baseline, name)) for name in ("arrival_rate", "in_system")]
        load_moved = changes[0] * changes[1] > 0 and max(map(abs, changes)) > threshold and min(map(abs, changes)) > threshold / 2
        sized = reference.items_per_request > 0 and baseline.items_per_request > 0
        size_moved = sized and abs(relative_change(reference.items_per_request, baseline.items_per_request)) > threshold
        if not load_moved and not size_moved:
            return None
        self.reference = baseline
        return (
            f"arrival rate {reference.arrival_rate:.0f} -> {baseline.arrival_rate:.0f} req/s, requests in the "
            f"worker {reference.in_system:.1f} -> {baseline.in_system:.1f}, items per request "
            f"{reference.items_per_request:.1f} -> {baseline.items_per_request:.1f}"
        )
