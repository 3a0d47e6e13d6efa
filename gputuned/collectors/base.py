"""The Collector protocol and the helpers every collector shares.

A collector reads one part of the machine and returns a `Collected`; it never changes
the machine. It receives everything it reads from as constructor arguments (roots, the
NVML module) so tests can point it at fixture trees and a fake NVML.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gputuned.samples import Collected, WorkerTarget


class Collector(Protocol):
    name: str

    def collect(self, targets: Sequence[WorkerTarget]) -> Collected:
        """Reads the current values, the per-process ones of each of `targets` (labelled with
        its name). Problems go into `Collected.errors`/`notes`, not exceptions."""
        ...

    def close(self) -> None:
        """Releases what the collector holds (NVML handles, event sets)."""
        ...
