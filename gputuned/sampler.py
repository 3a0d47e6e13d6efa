"""The sampling round: run every enabled collector once and publish into the store.

This is the job the scheduler ticks (default every second). A collector that raises is
contained here: its success turns 0 and the others still publish. Each distinct problem
is logged once when it first appears and once when it clears, so a GPU without ECC or a
kernel without NUMA does not fill the journal every second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from gputuned.collectors.base import Collector
from gputuned.samples import Collected, WorkerTarget
from gputuned.store import SampleStore, Snapshot

log = logging.getLogger(__name__)


class Sampler:
    def __init__(
        self,
        collectors: Sequence[Collector],
        store: SampleStore,
        targets: Callable[[], Sequence[WorkerTarget]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` times the collectors and stamps the snapshots (monotonic seconds)."""
        self._collectors = list(collectors)
        self._store = store
        self._targets = targets
        self._clock = clock
        self._reported: dict[str, set[str]] = {c.name: set() for c in self._collectors}
        self.rounds = 0

    @property
    def collector_names(self) -> list[str]:
        return [c.name for c in self._collectors]

    def tick(self) -> None:
        targets = self._targets()
        for collector in self._collectors:
            started = self._clock()
            try:
                collected = collector.collect(targets)
            except Exception as exc:  # a collector bug must not stop the others
                message = f"collector crashed: {type(exc).__name__}: {exc}"
                if message not in self._reported[collector.name]:
                    log.exception("collector %s crashed", collector.name)  # the traceback, once
                collected = Collected(errors=[message])
            duration = self._clock() - started
            self._report(collector.name, collected)
            self._store.publish(
                Snapshot(
                    collector=collector.name,
                    samples=tuple(collected.samples),
                    success=not collected.errors,
                    duration_seconds=duration,
                    taken_at=self._clock(),
                )
            )
        self.rounds += 1
        self._store.finish_round(self._clock())

    def _report(self, name: str, collected: Collected) -> None:
        """Logs each problem once when it appears and once when it is gone."""
        seen = self._reported[name]
        current = set(collected.errors) | {f"note: {n}" for n in collected.notes}
        for message in collected.errors:
            if message not in seen:
                log.warning("collector %s: %s", name, message)
        for note in collected.notes:
            if f"note: {note}" not in seen:
                log.info("collector %s: %s", name, note)
        for message in seen - current:
            if not message.startswith("note: "):
                log.info("collector %s recovered from: %s", name, message)
        # Notes are permanent facts: keep them remembered even in ticks that skip them.
        self._reported[name] = current | {m for m in seen if m.startswith("note: ")}

    def close(self) -> None:
        for collector in self._collectors:
            collector.close()
