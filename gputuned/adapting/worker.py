"""What the Triton and vLLM workers share: knobs put back when their server comes back.

An adapted server can restart on its own (an attached one, restarted by its owner), and it
comes back with the values it starts with, not the ones gputuned set. So each worker keeps
what its sets asked for, and when a poll finds the server answering again after it was
away, it reads the server's knobs afresh and sets the differing ones again. At attach, the
saved knobs the daemon passes (`--saved-knob`) are applied the same way.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from gputuned.adapting.lifecycle import ServerError
from gputuned.control.messages import StatsReport, WorkerIdentity, WorkerStatusBody
from gputuned.knobs import KnobError

log = logging.getLogger(__name__)


class AdaptedWorker(ABC):
    """The re-application of accepted knobs and the poll's reachability; a kind supplies how
    to read its server's knobs and stats and how to set them."""

    server_name = "the server"

    def __init__(self, identity: WorkerIdentity) -> None:
        self._lock = threading.Lock()  # what follows, and the kind's own state; never held across a call to the server
        self._identity = identity
        self._values: dict[str, int] = {}  # the knobs as last read from the server
        self._snapshot: StatsReport = {}
        self._accepted: dict[str, int] = {}  # what sets asked for: re-applied after the server restarts
        self._reachable = False

    def stats(self) -> StatsReport:
        with self._lock:
            return self._snapshot.copy()

    def status(self) -> WorkerStatusBody:
        with self._lock:
            return {"worker": self._identity.copy(), "knobs": dict(self._values)}

    def _current(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    @abstractmethod
    def apply(self, knobs: dict[str, Any]) -> dict[str, int]:
        """A set, all or nothing (the control handler's); KnobError when refused."""

    @abstractmethod
    def _reread(self) -> None:
        """Takes the server's knob values afresh (logs, never raises, when it cannot)."""

    @abstractmethod
    def _fetch(self) -> Any:
        """One reading of the server's numbers; ServerError or ValueError when it does not answer."""

    @abstractmethod
    def _take(self, reading: Any) -> None:
        """Folds a reading into the stats snapshot."""

    def _start(self, saved: Mapping[str, int]) -> None:
        """After the first read of the knobs: applies `saved` where it differs (skipped with a
        warning if refused), then takes the first reading."""
        current = self._current()
        wanted = {name: value for name, value in saved.items() if name in current}
        # All of them in one set where any differs: a knob can read the same from two configs
        # (Triton's batch of 1 with or without dynamic batching) that a set makes one.
        if any(current[name] != value for name, value in wanted.items()):
            try:
                self.apply(wanted)
                log.info("applied the saved knobs %s", wanted)
            except KnobError as exc:
                log.warning("saved knobs %s not applied: %s", wanted, exc)
        self._reachable = True
        self.poll()

    def _remember(self, applied: Mapping[str, int]) -> None:
        self._accepted.update(applied)

    def poll(self) -> bool:
        """Reads the server once into the stats snapshot; False when it did not answer."""
        try:
            reading = self._fetch()
        except (ServerError, ValueError) as exc:
            if self._reachable:
                log.warning("%s does not answer: %s", self.server_name, exc)
            self._reachable = False
            return False
        if not self._reachable:
            log.info("%s answers again", self.server_name)
            self._reachable = True
            self._restore_accepted()
        self._take(reading)
        return True

    def _restore_accepted(self) -> None:
        """After the server was away: it runs its start values again; put the accepted knobs back."""
        self._reread()
        current = self._current()
        differing = {name: value for name, value in self._accepted.items() if current.get(name) != value}
        if differing:
            try:
                self.apply(differing)
                log.info("%s came back; re-applied %s", self.server_name, differing)
            except KnobError as exc:
                log.warning("%s came back; cannot re-apply %s: %s", self.server_name, differing, exc)
