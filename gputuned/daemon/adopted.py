"""A worker that a previous daemon left running, watched through a pidfd.

When the daemon dies without draining its worker (SIGKILL, OOM killer), the worker,
which runs in its own session, keeps serving. The next daemon takes it over instead of
starting a second one that could not bind the same port. The worker is not its child,
so it cannot reap it or learn its exit status; a pidfd still says when it exits and
signals it without the risk of hitting a recycled pid. The interface is the part of
subprocess.Popen the supervisor uses.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess

# An adopted worker's exit status is unknowable (only its parent can reap it).
UNKNOWN_EXIT_CODE = 255


class AdoptedProcess:
    def __init__(self, pid: int) -> None:
        """OSError (ESRCH) when `pid` is not running."""
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._pidfd], [], [], 0)[0]:
            self._exited()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"adopted worker {self.pid}", timeout or 0)
            self._exited()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _exited(self) -> None:
        self.returncode = UNKNOWN_EXIT_CODE
        os.close(self._pidfd)
