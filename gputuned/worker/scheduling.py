"""The CPU scheduling policy of the worker's threads (the `sched_batch` knob).

The event loop hands each batch to its lane's thread and the lane hands the outcome back.
Under Linux's default policy the woken thread preempts the waker, which still holds the
GIL: the woken one blocks on the GIL at once, and the core switches back and forth, four
to six switches a batch where two do. A thread under SCHED_BATCH does not preempt on
waking: the waker runs on until it blocks, and the woken thread then finds the GIL free.
That saves most where batches are small and the serving path's cost is a large share of a
request's (bench/serving.py's ceiling at batch 1), and little at large batches.

The price: a woken worker thread no longer preempts another process on its core either,
so where something else competes for the core a request waits for that task's time slice
(a busy loop on the worker's core can double the median latency). Hence
a knob, off unless the worker starts under SCHED_BATCH, which the tuner tries and keeps
only if goodput within the SLO rises (tuners/scheduling.py).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TASKS = Path("/proc/self/task")


def starting_policy() -> int | None:
    """1 if the worker starts under SCHED_BATCH, 0 under the default policy, None where the
    knob is not offered: not Linux, or a policy someone chose (real-time, idle) that
    switching between these two would lose."""
    if not hasattr(os, "SCHED_BATCH"):
        return None
    policy = os.sched_getscheduler(0)
    if policy == os.SCHED_BATCH:
        return 1
    return 0 if policy == os.SCHED_OTHER else None


def set_batch_policy(enabled: int) -> None:
    """Every thread of the worker under SCHED_BATCH (1) or the default policy (0). Threads
    started later take their creator's: the lanes are started by the event loop's thread."""
    policy = os.SCHED_BATCH if enabled else os.SCHED_OTHER
    for task in TASKS.iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setscheduler(int(task.name), policy, os.sched_param(0))
