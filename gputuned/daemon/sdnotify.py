"""The sd_notify protocol, spoken directly: one datagram per notification to $NOTIFY_SOCKET.

No libsystemd binding is needed for four lines of text; this supports filesystem and
abstract ('@name') sockets like sd_notify(3). Without NOTIFY_SOCKET (not started by
systemd) every call is a no-op, so the daemon runs the same in a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str]) -> None:
        """Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from `environ` (given by the edge)."""
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog_seconds: float | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            self._watchdog_seconds = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    @property
    def watchdog_interval(self) -> float | None:
        """How often to send WATCHDOG=1: half of WATCHDOG_USEC (as sd_watchdog_enabled(3) advises)."""
        return None if self._watchdog_seconds is None else self._watchdog_seconds / 2

    def notify(self, *assignments: str) -> None:
        if not self._address:
            return
        payload = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, self._address)
        except OSError as exc:
            log.warning("sd_notify to %r failed: %s", self._address, exc)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")


def watchdog_due(now: float, last_sent: float, interval: float | None, sampling_interval: float) -> bool:
    """Whether to send WATCHDOG=1 in this sampling round: waiting for the next round would
    stretch the gap since the last one past `interval` (None: no watchdog)."""
    return interval is not None and now - last_sent + sampling_interval > interval


def status_due(now: float, last_sent: float, every: float) -> bool:
    """Whether STATUS= is due again (sent every `every` seconds, not every round)."""
    return now - last_sent >= every
