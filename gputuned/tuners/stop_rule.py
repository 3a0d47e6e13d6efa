"""The stop rule: when exploring no longer pays.

`patience` explore trials in a row that did not pay say the tuner stands on the optimum,
or on a plateau whose points the noise cannot tell apart; each further trial there only
costs goodput. Converged, no explore move is tried until a workload shift, a resume, or
`reexplore_seconds` later (the landscape may have moved without the load shifting).
"""

from __future__ import annotations


class StopRule:
    def __init__(self, patience: int, reexplore_seconds: float) -> None:
        self.patience = patience
        self.reexplore_seconds = reexplore_seconds
        self.misses = 0  # explore trials in a row that did not pay
        self.converged_at: float | None = None

    @property
    def converged(self) -> bool:
        return self.converged_at is not None

    def missed(self, now: float) -> bool:
        """One more explore trial did not pay; True when that makes the tuner converge."""
        self.misses += 1
        if self.converged_at is None and self.misses >= self.patience:
            self.converged_at = now
            return True
        return False

    def paid(self) -> None:
        self.misses = 0

    def due_to_reexplore(self, now: float) -> bool:
        return self.converged_at is not None and now - self.converged_at >= self.reexplore_seconds

    def reset(self) -> None:
        self.misses, self.converged_at = 0, None
