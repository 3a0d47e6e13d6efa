"""Length distributions for generated load: prompt and output tokens, sequence lengths.

One option syntax wherever `gputuned load` takes a length:

    128          every request the same length
    32-512       uniform between the two, both included
    @FILE        drawn from the lengths in FILE (one integer per line; `#` starts a comment),
                 each as often as it appears: replay a production trace's lengths
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Lengths:
    values: tuple[int, ...] = ()  # drawn from (a file); empty: uniform in [low, high]
    low: int = 1
    high: int = 1

    def draw(self, rng: random.Random) -> int:
        return rng.choice(self.values) if self.values else rng.randint(self.low, self.high)

    @property
    def maximum(self) -> int:
        return max(self.values) if self.values else self.high

    def __str__(self) -> str:
        if self.values:
            return f"{len(self.values)} lengths from a file ({min(self.values)}-{max(self.values)})"
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


def parse_lengths(spec: str) -> Lengths:
    """Lengths from the option syntax above; ValueError saying what is wrong."""
    text = spec.strip()
    if text.startswith("@"):
        return _from_file(Path(text[1:]))
    low_text, dash, high_text = text.partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if dash else low
    except ValueError:
        raise ValueError(f"{spec!r} is not a length: give N, LOW-HIGH or @FILE") from None
    if low < 1 or high < low:
        raise ValueError(f"{spec!r}: lengths must be at least 1, LOW at most HIGH")
    return Lengths(low=low, high=high)


def _from_file(path: Path) -> Lengths:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read the lengths file {path}: {exc.strerror}") from None
    values = []
    for number, line in enumerate(lines, 1):
        text = line.partition("#")[0].strip()
        if not text:
            continue
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{path}:{number}: {text!r} is not a length (a whole number of at least 1)")
        values.append(int(text))
    if not values:
        raise ValueError(f"{path} holds no lengths")
    return Lengths(values=tuple(values))
