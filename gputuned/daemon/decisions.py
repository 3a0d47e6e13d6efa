"""The decision log: every tuning decision appended as one JSON line to STATE_DIR/decisions.jsonl.

A log that cannot be written (a full disk, a read-only state directory) is said once in the
log and in `gputuned status`; the decisions stay in the guard's memory meanwhile.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from gputuned.control.messages import Decision

log = logging.getLogger(__name__)


class DecisionLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: str | None = None  # why the last append failed; None once one succeeds

    def append(self, decision: Decision) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as log_file:
                log_file.write(json.dumps(decision.to_json(), separators=(",", ":")) + "\n")
        except OSError as exc:
            if self.error is None:
                log.warning("cannot append to %s (%s); decisions stay in memory", self.path, exc.strerror or exc)
            self.error = str(exc)
            return
        self.error = None
