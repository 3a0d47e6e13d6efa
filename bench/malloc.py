"""The worker's malloc setting against glibc's own and the setting before it, side by side.

A model's activations are large blocks allocated and freed once a batch; a malloc that gives
them back to the kernel faults them in again the next batch (gputuned/worker/allocator.py).
Three workers of the same model share the worker core, one per setting, each started with
the setting in its environment (a MALLOC_* variable makes the worker leave malloc as set):
- glibc: glibc's own (MALLOC_ARENA_TEST at its default value, 8: nothing changes);
- before: no mmap and no trimming below 1 GiB, but an arena per thread (the worker's setting
  until one arena for every thread);
- now: the worker's own setting.
At batches of 64, 32 and 16 in turn (the order of a tuner's probe down: each batch starts
from the heap the last one left), the workers are loaded in turn, windows A B C C B A so
drift falls on all alike, with the load generator on the other core. Printed per batch:
items/s within the SLO, the ratio of now to each, and each worker's page faults a batch.

    python bench/malloc.py [--model resnet-mini|encoder] [--rounds 3] [--window 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

from serving import MODELS, pinned_worker, served_items_per_second, warm_up, worker_arguments

from gputuned.procfs import parse_proc_stat
from gputuned.testing.processes import REPO_ROOT

SETTINGS = {
    "glibc": {"MALLOC_ARENA_TEST": "8"},
    "before": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)},
    "now": {},
}
BATCHES = (64, 32, 16)
CLIENTS = 64


def minor_faults(pid: int) -> int:
    """The process's minor page faults so far, all threads (as the NUMA collector reads them)."""
    return parse_proc_stat(Path(f"/proc/{pid}/stat").read_text()).minor_faults


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="resnet-mini")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=3.0, help="seconds per window")
    parser.add_argument("--slo-ms", type=float, default=100.0)
    parser.add_argument("--worker-core", type=int, default=1)
    parser.add_argument("--load-core", type=int, default=0)
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.load_core})
    spec, shape = MODELS[args.model]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workers = {}
        for label, setting in SETTINGS.items():
            process, base, client = pinned_worker(
                stack, tmp / label, REPO_ROOT, worker_arguments(spec, shape), args.worker_core, setting
            )
            workers[label] = (process.pid, base, client)
        order = [*SETTINGS, *reversed(SETTINGS)]
        print(f"{args.model}: {CLIENTS} closed-loop clients, windows {' '.join(order)} at batches {BATCHES} in turn")
        for batch in BATCHES:
            for _, base, client in workers.values():
                client.set({"max_batch_size": batch})
                warm_up(base, CLIENTS)  # the first batches at a new size grow the heap
            rates: dict[str, list[float]] = {label: [] for label in SETTINGS}
            faults: dict[str, list[float]] = {label: [] for label in SETTINGS}
            for _ in range(args.rounds):
                for label in order:
                    pid, base, _ = workers[label]
                    warm_up(base, CLIENTS)
                    before = minor_faults(pid)  # faults counted over the measured window alone
                    rate = served_items_per_second(base, CLIENTS, args.window, args.slo_ms / 1000, warmed=True)
                    rates[label].append(rate)
                    faults[label].append((minor_faults(pid) - before) / max(rate * args.window / batch, 1.0))
            now = statistics.median(rates["now"])
            print(
                f"  batch {batch}: "
                + "; ".join(
                    f"{label} {statistics.median(rates[label]):.0f} items/s, {statistics.median(faults[label]):.0f} faults a batch"
                    + ("" if label == "now" else f" (now {now / statistics.median(rates[label]):.2f}x)")
                    for label in SETTINGS
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
