"""Flap tracking: a knob reverted `limit` times within `window` seconds is left alone for that window.

A change that keeps getting reverted is either noise or a landscape the tuner cannot
read; trying it again only costs goodput. A back-off is never held back by it: it answers
an SLO breach.
"""

from __future__ import annotations

import collections


class FlapTracker:
    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._reverts: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)

    def reverted(self, knob: str, now: float) -> None:
        self._reverts[knob].append(now)

    def flapping(self, knob: str, now: float) -> bool:
        reverts = self._reverts[knob]
        while reverts and now - reverts[0] > self.window:
            reverts.popleft()
        return len(reverts) >= self.limit

    def clear(self) -> None:
        self._reverts.clear()
