"""Knobs: the worker's tunable settings, their schema, and validation of a change (pure).

The worker declares its knobs (type, bounds, whether they apply live) in its hello; the
control protocol, the `gputuned set` command and the tuners all validate against that one
declaration. A change set is all-or-nothing: every value is checked before any applies.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any


class KnobError(ValueError):
    """A refused knob change; the message says which knob and why."""


@dataclass(frozen=True, slots=True)
class KnobSpec:
    name: str
    default: int
    minimum: int
    maximum: int
    live: bool = True
    description: str = ""

    def to_wire(self, value: int) -> dict[str, Any]:
        return {
            "type": "int",
            "value": value,
            "min": self.minimum,
            "max": self.maximum,
            "live": self.live,
            "description": self.description,
        }

    @classmethod
    def from_wire(cls, name: str, wire: dict[str, Any]) -> KnobSpec:
        """The spec a worker declared in its hello (the inverse of to_wire)."""
        return cls(name, wire["value"], wire["min"], wire["max"], wire["live"], wire.get("description", ""))

    def check(self, value: Any) -> int:
        """The value as an int, or KnobError saying why it is refused."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise KnobError(f"{self.name}={value!r} is not an integer")
        if not self.live:
            raise KnobError(f"{self.name} applies only at restart; restart the worker with the new value")
        if value < self.minimum:
            raise KnobError(f"{self.name}={value} is below its minimum {self.minimum}")
        if value > self.maximum:
            raise KnobError(f"{self.name}={value} is above its maximum {self.maximum}")
        return value


def validate_changes(
    specs: Mapping[str, KnobSpec], changes: Mapping[str, Any], restart_only: Collection[str] = ()
) -> dict[str, int]:
    """Checks every requested change; returns them as ints, or raises one KnobError naming all problems.

    `restart_only` names settings that are not knobs at all (the device, the model): a
    change to one is refused with that reason rather than as an unknown knob.
    """
    if not changes:
        raise KnobError("no knobs given")
    problems = []
    checked: dict[str, int] = {}
    for name, value in changes.items():
        spec = specs.get(name)
        if spec is None:
            if name in restart_only:
                problems.append(f"{name} applies only at restart; restart the worker with the new value")
            else:
                problems.append(f"unknown knob {name!r}; known knobs: {', '.join(sorted(specs))}")
            continue
        try:
            checked[name] = spec.check(value)
        except KnobError as exc:
            problems.append(str(exc))
    if problems:
        raise KnobError("; ".join(problems))
    return checked


def parse_assignments(pairs: list[str]) -> dict[str, int]:
    """'KNOB=VALUE' command-line words -> {knob: int}; raises KnobError naming a bad word."""
    changes: dict[str, int] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise KnobError(f"{pair!r} is not KNOB=VALUE")
        try:
            changes[name] = int(text)
        except ValueError:
            raise KnobError(f"{name}={text!r} is not an integer") from None
    return changes
