"""Soak: the daemon and its worker under a steady load for ten minutes, with periodic knob
changes and one worker kill half way.

Runs the real `gputuned run` supervising the built-in worker (CPU), a closed-loop load of
8 clients, a `gputuned set` through the admin socket every 30 s (alternating batch size
and lanes), and one SIGKILL of the worker at half time. Reports requests served and
failed (those in flight at the kill apart), RSS growth in % and open file descriptors.

RSS is sampled every 5 s; growth is the median of the last minute against the median of
the first minute once each process's bounded buffers are full, so that filling them is
not taken for a leak: the daemon's after --daemon-warmup (its sample rings hold 300
rounds at 1 Hz and the supervisor 5 minutes of worker stats), each worker's after --warmup.

Target: no failed request outside the kill, RSS growth under 5%, no
descriptor growth.

    python bench/soak.py [--seconds 600] [--warmup 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import threading
import time
from pathlib import Path

import psutil

from gputuned.control.client import ControlClient
from gputuned.daemon.status import worker_entry
from gputuned.loadgen import LoadPlan, run_load
from gputuned.testing.processes import running_supervising_daemon

REFUSED = {"ClientConnectorError", "http_503"}  # the worker down or starting: nothing was accepted
SAMPLE_EVERY = 5.0
CHANGES = [{"max_batch_size": 16}, {"streams": 2}, {"max_batch_size": 8}, {"streams": 1}]


def footprint(pid: int) -> tuple[int, int]:
    """(resident bytes, open descriptors)."""
    process = psutil.Process(pid)
    return process.memory_info().rss, process.num_fds()


def worker_pid(admin: Path) -> int:
    with ControlClient(admin) as client:
        return worker_entry(client.request("status")["status"])["pid"]


def wait_for_new_worker(admin: Path, old: int, seconds: float = 60) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with ControlClient(admin) as client:
                worker = worker_entry(client.request("status")["status"])
            if worker["pid"] not in (None, old) and worker["state"] == "ready":
                return worker["pid"]
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the worker was not restarted")


def growth(samples: list[tuple[float, int, int]], warm_at: float) -> str:
    """RSS and descriptors: the median of the first minute after warm-up against that of the
    last minute (RSS moves a few % with batch sizes and lanes, and a descriptor comes and
    goes with each admin connection; a leak keeps climbing)."""
    warm = [s for s in samples if s[0] >= warm_at]
    first = [s for s in warm if s[0] < warm[0][0] + 60]
    last = [s for s in warm if s[0] > warm[-1][0] - 60]
    before, after = statistics.median(s[1] for s in first), statistics.median(s[1] for s in last)
    return (
        f"RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB ({(after - before) / before * 100:+.1f}%) from "
        f"{warm[0][0]:.0f} s to {warm[-1][0]:.0f} s; fds {statistics.median(s[2] for s in first):.0f} -> "
        f"{statistics.median(s[2] for s in last):.0f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the soak (default 600)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before a worker's first RSS reading (default 60)")
    parser.add_argument(
        "--daemon-warmup",
        type=float,
        default=320.0,
        help="seconds before the daemon's first RSS reading (default 320: its buffers are full)",
    )
    parser.add_argument("--change-every", type=float, default=30.0, help="seconds between knob changes (default 30)")
    args = parser.parse_args()
    if not args.warmup < args.seconds / 2 or not args.daemon_warmup < args.seconds - 10:
        parser.error("the warm-ups must end before the kill (worker) and before the end (daemon)")
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"gputuned-soak-{os.getpid()}"
    workdir.mkdir(parents=True)

    with running_supervising_daemon(workdir, "--log-level", "warning", device="cpu") as (daemon, _metrics, worker, admin):
        box: dict = {}
        plan = LoadPlan(url=worker, concurrency=8, requests=10**9, duration=args.seconds)
        load = threading.Thread(target=lambda: box.update(result=asyncio.run(run_load(plan))))
        started = time.monotonic()
        load.start()
        workers = [(worker_pid(admin), started)]  # (pid, started at)
        samples: dict[int, list[tuple[float, int, int]]] = {}  # pid -> (seconds since start, rss, fds)
        killed_at_perf = None
        changes = 0
        next_change, next_sample = started + args.change_every, started
        while load.is_alive():
            now = time.monotonic()
            if killed_at_perf is None and now >= started + args.seconds / 2:
                killed_at_perf = time.perf_counter()
                os.kill(workers[0][0], signal.SIGKILL)
                workers.append((wait_for_new_worker(admin, workers[0][0]), time.monotonic()))
            if now >= next_change:
                with ControlClient(admin) as client:
                    client.set(CHANGES[changes % len(CHANGES)])
                changes += 1
                next_change += args.change_every
            if now >= next_sample:
                for pid in (daemon.pid, workers[-1][0]):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        samples.setdefault(pid, []).append((now - started, *footprint(pid)))
                next_sample += SAMPLE_EVERY
            time.sleep(0.2)
        load.join()

    result = box["result"]
    near_kill = [
        kind for sent, kind in result.failures if killed_at_perf is not None and killed_at_perf - 2 < sent < killed_at_perf + 60
    ]
    outside = [
        kind for sent, kind in result.failures if killed_at_perf is None or not killed_at_perf - 2 < sent < killed_at_perf + 60
    ]
    in_flight = [kind for kind in near_kill if kind not in REFUSED]
    print(f"soak: {args.seconds:.0f} s, 8 clients, {changes} knob changes, one worker kill at {args.seconds / 2:.0f} s")
    print(
        f"requests: {result.ok} served, {sum(result.errors.values())} failed: {len(in_flight)} in flight at the kill, "
        f"{len(near_kill) - len(in_flight)} refused while the worker restarted, {len(outside)} anywhere else"
    )
    daemon_samples = samples[daemon.pid]
    print("daemon " + growth(daemon_samples, args.daemon_warmup))
    for n, (pid, born) in enumerate(workers, 1):
        print(f"worker {n} " + growth(samples[pid], born - started + args.warmup))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
