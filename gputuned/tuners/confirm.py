"""Judging a small difference by interleaved windows, and the noise that says what is small.

Near the optimum, settings differ by less than the noise between two windows of one
setting (on a shared VM, +-10-15%, and its speed drifts by 20-35% within a minute). One
baseline window against one trial window then keeps or reverts on luck: a gain of a few
percent is as likely the drift as the change.

So a verdict the single trial window cannot give beyond the noise is settled as the
side-by-side benchmark settles it: the guard switches back and forth, old, new, old, new,
and compares each window with its neighbours. A linear drift adds to the old -> new pairs
what it takes from the new -> old ones, so it cancels in their mean; the noise averages
down with the number of pairs, and the comparison stops as soon as the mean is clear of
the bar by its standard error, or at the window budget with the mean alone deciding.

The noise carries across baselines: one baseline's two halves say little about the noise
(two numbers), so the guard keeps the differences of the last few pairs of windows at one
setting (baseline halves, and the repeated windows of an interleaving) and takes their
median.
"""

from __future__ import annotations

import collections
import math
import statistics
from dataclasses import dataclass, field

from gputuned.control.messages import Evidence

NOISE_SAMPLES = 16  # pairs of same-setting windows the noise estimate remembers


def relative_difference(a: float, b: float) -> float:
    """|a - b| over their mean: the noise one pair of windows at one setting shows."""
    return 2 * abs(a - b) / max(a + b, 1e-9)


class NoiseEstimate:
    """The window-to-window noise of a metric, from the last NOISE_SAMPLES same-setting pairs."""

    def __init__(self) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=NOISE_SAMPLES)

    def add(self, a: float, b: float) -> None:
        if a > 0 or b > 0:
            self._samples.append(relative_difference(a, b))

    def value(self, floor: float, ceiling: float) -> float:
        """The median difference, within [floor, ceiling] (floor while nothing is known)."""
        if not self._samples:
            return floor
        return min(max(statistics.median(self._samples), floor), ceiling)

    def clear(self) -> None:
        self._samples.clear()


@dataclass
class Interleaving:
    """Windows at the old and the new setting, alternating, from the baseline (old) and the
    trial window (new) on. `bar` is the log-gain the new setting must beat (the minimum
    margin for a change that must pay, minus it for one that must only not lose);
    `noise` is one pair's noise (NoiseEstimate.value); `max_windows` the budget."""

    bar: float
    noise: float
    max_windows: int
    metric: str  # the Measurement field compared: goodput, or throughput under overload
    windows: list[tuple[bool, float]] = field(default_factory=list)  # (new?, metric value)

    @property
    def next_is_new(self) -> bool:
        return not self.windows[-1][0]

    def last(self, new: bool) -> float:
        """The latest window's value at the new (or the old) setting."""
        return next(value for side, value in reversed(self.windows) if side == new)

    def add(self, new: bool, value: float) -> None:
        if self.windows and self.windows[-1][0] == new:
            raise ValueError("interleaved windows alternate between the old and the new setting")
        self.windows.append((new, value))

    def pair_gains(self) -> list[float]:
        """log(new / old) of each two neighbouring windows."""
        gains = []
        for (first_new, first), (_, second) in zip(self.windows, self.windows[1:], strict=False):
            new, old = (first, second) if first_new else (second, first)
            gains.append(math.log(max(new, 1e-9) / max(old, 1e-9)))
        return gains

    def gain(self) -> float:
        """The mean log-gain over the neighbouring pairs (drift cancels between the two orders)."""
        gains = self.pair_gains()
        return statistics.fmean(gains) if gains else 0.0

    def error(self) -> float:
        """The standard error of gain(), taking `noise` as one window's: each window inside
        the sequence counts twice (once per neighbour) and the two at its ends once, so the
        mean of n - 1 pairs has a variance of (4n - 6) / (n - 1)^2 windows'."""
        n = len(self.windows)
        return self.noise * math.sqrt(4 * n - 6) / (n - 1) if n >= 2 else math.inf

    def verdict(self) -> bool | None:
        """True to keep the new setting, False to go back, None to measure another window."""
        if len(self.windows) < 3:
            return None
        gain, error = self.gain(), self.error()
        if gain - error > self.bar:
            return True
        if gain + error < self.bar:
            return False
        if len(self.windows) >= self.max_windows:
            return gain > self.bar
        return None

    def evidence(self) -> Evidence:
        """The verdict's evidence as the decision records it (relative gain and bar, not logs)."""
        return Evidence(self.metric, len(self.windows), True, math.expm1(self.gain()), math.expm1(self.bar), self.noise)

    def describe(self) -> str:
        return (
            f"interleaved over {len(self.windows)} windows: {math.expm1(self.gain()):+.1%} "
            f"(+-{self.error():.1%}) against a bar of {math.expm1(self.bar):+.1%}"
        )
