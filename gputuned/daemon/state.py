"""Accepted knobs per workload, persisted atomically in the state directory.

A restarted daemon resumes from the tuned settings of the workload it finds (a workload
is model + device + input shape and dtype, so a different model starts from defaults).
The file is replaced whole (write a temporary file, fsync, rename, fsync the directory),
so a crash or a full disk leaves either the old or the new file, never half of one. A
file that cannot be read or parsed is set aside with a warning and defaults are used.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_VERSION = 1


def workload_key(hello: dict[str, Any]) -> str:
    """'resnet-mini|cpu|FP32[3,64,64]' from a worker's hello."""
    worker = hello["worker"]
    spec = worker.get("input", {})
    shape = ",".join(str(d) for d in spec.get("shape", []))
    return f"{worker.get('model')}|{worker.get('device')}|{spec.get('dtype')}[{shape}]"


def write_atomically(path: Path, data: bytes) -> None:
    """Replaces `path` with `data` so that readers see the old or the new file, whole."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class KnobStore:
    """workload -> accepted knob values, in `state_dir/knobs.json`."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "knobs.json"
        self._workloads: dict[str, dict[str, int]] = {}
        self.last_workload: str | None = None  # the workload the worker served last
        self.persist_error: str | None = None  # set while saving fails (the daemon keeps the knobs in memory)

    def load(self) -> None:
        """Reads the file; a corrupt or unreadable one is renamed aside and defaults are used."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read %s (%s); starting from default knobs", self.path, exc.strerror)
            return
        try:
            document = json.loads(raw)
            if not isinstance(document, dict) or document.get("version") != STATE_VERSION:
                raise ValueError(f"not a version {STATE_VERSION} knob state")
            workloads = document["workloads"]
            last = document.get("last_workload")
            if last is not None and not isinstance(last, str):
                raise ValueError("last_workload must be a string")
            if not isinstance(workloads, dict) or not all(
                isinstance(knobs, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in knobs.values())
                for knobs in workloads.values()
            ):
                raise ValueError("workloads must map to knob -> integer")
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            try:
                os.replace(self.path, aside)
                where = f"moved to {aside}"
            except OSError as move_error:
                where = f"could not be moved aside: {move_error.strerror}"
            log.warning("knob state %s is unusable (%s); %s; starting from default knobs", self.path, exc, where)
            return
        self._workloads = workloads
        self.last_workload = last

    def knobs_for(self, workload: str) -> dict[str, int]:
        return dict(self._workloads.get(workload, {}))

    def accept(self, workload: str, knobs: dict[str, int]) -> None:
        """Records accepted values and saves; on a failed save keeps them in memory and says so."""
        self._workloads.setdefault(workload, {}).update(knobs)
        self.last_workload = workload
        self._save()

    def forget(self, workload: str, knobs: dict[str, int]) -> None:
        for name in knobs:
            self._workloads.get(workload, {}).pop(name, None)
        self._save()

    def remember_workload(self, workload: str) -> None:
        if workload != self.last_workload:
            self.last_workload = workload
            self._save()

    def _save(self) -> None:
        document = {"version": STATE_VERSION, "last_workload": self.last_workload, "workloads": self._workloads}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, json.dumps(document, indent=2, sort_keys=True).encode() + b"\n")
        except OSError as exc:
            reason = f"{exc.strerror or exc}: {exc.filename or self.path}"
            if self.persist_error is None:
                log.warning("cannot save knob state to %s (%s); keeping it in memory", self.path, reason)
            self.persist_error = reason
            return
        if self.persist_error is not None:
            log.info("knob state saved to %s again", self.path)
        self.persist_error = None
