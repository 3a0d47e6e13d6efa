"""When to restart a worker that exited, and when to stop trying (pure: no processes, no sleeps).

Restart delays grow exponentially with +-20% jitter (so a fleet does not restart in
lockstep) and start afresh once a worker has run for a whole crash-loop window; a
crash loop is `crash_loop_exits` exits within `crash_loop_window` seconds, after which
the worker is left down and the daemon stays up.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    initial_delay: float = 0.5
    max_delay: float = 30.0
    crash_loop_exits: int = 5
    crash_loop_window: float = 60.0
    ping_interval: float = 2.0
    ping_timeout: float = 10.0
    start_timeout: float = 120.0
    drain_timeout: float = 30.0

    def delay(self, consecutive_exits: int, rng: random.Random) -> float:
        """Exponential backoff with +-20% jitter."""
        base = min(self.initial_delay * 2 ** max(consecutive_exits - 1, 0), self.max_delay)
        return base * rng.uniform(0.8, 1.2)


class CrashLoopDetector:
    """True once `exits` exits fall within `window` seconds."""

    def __init__(self, exits: int, window: float) -> None:
        self._exits = exits
        self._window = window
        self._times: collections.deque[float] = collections.deque()

    def record_exit(self, at: float) -> bool:
        self._times.append(at)
        while self._times and at - self._times[0] > self._window:
            self._times.popleft()
        return len(self._times) >= self._exits


class RestartPlan:
    """Decides, at each exit, the delay before the next start or that restarts stop."""

    def __init__(self, policy: RestartPolicy, rng: random.Random | None = None) -> None:
        self._policy = policy
        self._rng = rng or random.Random()
        self.forget()

    def on_exit(self, now: float, started_at: float | None) -> float | None:
        """Seconds to wait before restarting, or None: a crash loop, restarts stop.

        `now` and `started_at` (when the worker that exited started) are monotonic seconds."""
        if started_at is not None and now - started_at >= self._policy.crash_loop_window:
            self._consecutive_exits = 0  # it ran well for a whole window: start the backoff afresh
        self._consecutive_exits += 1
        if self._crash_loop.record_exit(now):
            return None
        return self._policy.delay(self._consecutive_exits, self._rng)

    def forget(self) -> None:
        """No exit counts yet: at the start, and once an operator restarts the worker."""
        self._consecutive_exits = 0
        self._crash_loop = CrashLoopDetector(self._policy.crash_loop_exits, self._policy.crash_loop_window)

    def crash_loop_message(self, code: int, worker: str) -> str:
        p = self._policy
        return (
            f"crash loop: {p.crash_loop_exits} exits within {p.crash_loop_window:g} s; not restarting (last exit code "
            f"{code}); once the cause is fixed, `gputuned restart --worker {worker}` starts it again"
        )
