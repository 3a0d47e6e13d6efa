"""Per-request latencies from Triton's request traces.

Triton's metrics give exact counts but no latency histogram: its only latency quantiles
are a summary over a sliding minute, too slow for a trial of a few seconds. Its trace
extension at level TIMESTAMPS records every request's timestamps; with a trace file and
`log-frequency` N, Triton writes each N traces to `<file>.<index>` as one JSON array. The
adapter reads each finished file once and deletes it.

A request's latency is taken from the HTTP (or gRPC) receive start to the send end when
the frontend recorded them, which is what a client on the host sees less the network;
otherwise from REQUEST_START to REQUEST_END, the span of Triton's own request duration.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SPANS = (("HTTP_RECV_START", "HTTP_SEND_END"), ("GRPC_WAITREAD_END", "GRPC_SEND_END"), ("REQUEST_START", "REQUEST_END"))


@dataclass(frozen=True)
class TracedRequest:
    model: str
    latency_seconds: float


def parse_traces(text: str) -> list[TracedRequest]:
    """One trace file's requests; traces without a model name or a complete span are skipped.
    ValueError when the text is not a JSON array (a file still being written)."""
    events = json.loads(text)
    if not isinstance(events, list):
        raise ValueError("a trace file holds a JSON array")
    models: dict[Any, str] = {}
    stamps: dict[Any, dict[str, int]] = {}
    for event in events:
        if not isinstance(event, dict) or "id" not in event:
            continue
        trace = event["id"]
        if "model_name" in event:
            models[trace] = str(event["model_name"])
        for stamp in event.get("timestamps") or ():
            stamps.setdefault(trace, {})[stamp["name"]] = int(stamp["ns"])
    requests = []
    for trace, model in models.items():
        marks = stamps.get(trace, {})
        for start, end in _SPANS:
            if start in marks and end in marks and marks[end] >= marks[start]:
                requests.append(TracedRequest(model, (marks[end] - marks[start]) / 1e9))
                break
    return requests


class TraceFiles:
    """The numbered files of one trace file: each finished one is parsed, handed out once and deleted."""

    def __init__(self, trace_file: Path) -> None:
        self._base = trace_file
        self._pattern = re.compile(re.escape(trace_file.name) + r"\.(\d+)$")

    def take(self) -> list[TracedRequest]:
        """The requests of every finished file, oldest first. A file that does not parse is
        being written, unless a later one exists: then it is broken and dropped with a warning."""
        try:
            names = [entry.name for entry in self._base.parent.iterdir()]
        except OSError as exc:
            log.warning("cannot list the trace directory %s: %s", self._base.parent, exc)
            return []
        numbered = sorted((int(match.group(1)), name) for name in names if (match := self._pattern.match(name)))
        requests: list[TracedRequest] = []
        for position, (_, name) in enumerate(numbered):
            path = self._base.parent / name
            try:
                requests += parse_traces(path.read_text())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                if position == len(numbered) - 1:
                    break  # the newest may still be being written
                log.warning("dropping the unreadable trace file %s: %s", path, exc)
            path.unlink(missing_ok=True)
        return requests
