"""The Collector protocol and the helpers every collector shares.

A collector reads one part of the machine and returns a `Collected`; it never changes
the machine. It receives everything it reads from as constructor arguments (roots, the
NVML module) so tests can point it at fixture trees and a fake NVML.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
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


def read_text(root: Path, *parts: str | int) -> str:
    """Reads a /proc or /sys file below `root`; raises OSError like open() does."""
    return root.joinpath(*map(str, parts)).read_text(encoding="ascii", errors="replace")


def describe_os_error(exc: OSError) -> str:
    """'cannot read /proc/vmstat: No such file or directory' for logs and notes."""
    return f"cannot read {exc.filename}: {exc.strerror or exc}"
