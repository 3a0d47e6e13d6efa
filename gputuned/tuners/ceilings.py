"""Ceilings: the highest value of a knob that fits, learned from out-of-memory events.

Unlike a refused direction, a ceiling is never forgotten while the worker runs: memory
does not grow back when another knob moves or the load shifts.
"""

from __future__ import annotations


class Ceilings:
    def __init__(self) -> None:
        self._highest: dict[str, int] = {}

    def learn(self, knob: str, highest: int) -> None:
        self._highest[knob] = min(self._highest.get(knob, highest), highest)

    def as_dict(self) -> dict[str, int]:
        return dict(self._highest)
