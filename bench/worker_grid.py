"""Worker throughput and p99 across knob settings, and the control round trip.

One real `gputuned worker` (built-in model, CPU) under closed-loop load from this
process; the grid is walked by setting knobs live over the control socket (what the
tuner will do), with a warm-up before each measured window. Then the control round
trip (set -> ack, and ping -> pong) is timed with the worker idle and under load.

Target: round trip p99 under 5 ms idle; a knob in effect within one batch
under load (a set is acknowledged before a batch in flight finishes, and knobs are read
when each batch starts forming).

    python bench/worker_grid.py [--window 3] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from gputuned.control.client import ControlClient
from gputuned.loadgen import LoadPlan, run_load
from gputuned.testing.processes import running_worker


def measure(base: str, concurrency: int, seconds: float) -> dict:
    result = asyncio.run(run_load(LoadPlan(url=base, concurrency=concurrency, requests=10**7, duration=seconds)))
    return result.summary()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def round_trips(client: ControlClient, count: int) -> tuple[list[float], list[float]]:
    sets, pings = [], []
    for i in range(count):
        started = time.perf_counter()
        client.set({"max_queue_delay_us": i % 2})
        sets.append(time.perf_counter() - started)
        pings.append(client.ping())
    return sets, pings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=3.0, help="seconds measured per grid point")
    parser.add_argument("--concurrency", type=int, default=64, help="closed-loop clients")
    parser.add_argument("--batches", default="1,4,16,64")
    parser.add_argument("--streams", default="1,2")
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    grid = list(itertools.product(*(map(int, getattr(args, name).split(",")) for name in ("batches", "streams", "threads"))))

    with tempfile.TemporaryDirectory() as tmp, running_worker(Path(tmp), "--log-level", "warning") as (_, base, control):
        rows = []
        with ControlClient(control) as client:
            for batch, streams, threads in grid:
                client.set({"max_batch_size": batch, "streams": streams, "intra_op_threads": threads})
                measure(base, args.concurrency, 1.0)  # warm-up at the new setting
                before = client.next_stats(timeout=5)["stats"]["batch_size"]
                summary = measure(base, args.concurrency, args.window)
                after = client.next_stats(timeout=5)["stats"]["batch_size"]
                mean_batch = (after["sum"] - before["sum"]) / max(after["count"] - before["count"], 1)
                rows.append((batch, streams, threads, summary, mean_batch))
                print(f"  measured batch={batch} streams={streams} threads={threads}", file=sys.stderr)

            client.set({"max_batch_size": 16, "streams": 1, "intra_op_threads": 2, "max_queue_delay_us": 0})
            idle_sets, idle_pings = round_trips(client, 500)

            box: dict = {}
            load = threading.Thread(target=lambda: box.update(s=measure(base, args.concurrency, 8.0)))
            load.start()
            time.sleep(1.0)
            before = client.next_stats(timeout=5)["stats"]
            busy_sets, busy_pings = round_trips(client, 300)
            after = client.next_stats(timeout=5)["stats"]
            load.join()

    print(f"\nbuilt-in resnet-mini on CPU, closed loop with {args.concurrency} clients, {args.window:g} s per point\n")
    print(
        f"{'max_batch':>9} {'streams':>7} {'threads':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10} {'errors':>6}"
    )
    best = max(rows, key=lambda row: row[3]["throughput_per_second"])
    for batch, streams, threads, summary, mean_batch in rows:
        latency = summary["latency_seconds"]
        mark = "  <- best" if (batch, streams, threads) == best[:3] else ""
        print(
            f"{batch:>9} {streams:>7} {threads:>7} {summary['throughput_per_second']:>9.1f} {latency['p50'] * 1e3:>8.2f} "
            f"{latency['p99'] * 1e3:>8.2f} {mean_batch:>10.1f} {summary['errors']:>6}{mark}"
        )
    default = rows[0][3]["throughput_per_second"]
    print(f"\nbest / first point: {best[3]['throughput_per_second'] / default:.2f}x")

    batch_seconds = (after["lane_busy_seconds"] - before["lane_busy_seconds"]) / max(after["batches"] - before["batches"], 1)
    print("\ncontrol round trip (ms)       p50      p99")
    for label, values in (
        ("set->ack idle", idle_sets),
        ("ping idle", idle_pings),
        ("set->ack under load", busy_sets),
        ("ping under load", busy_pings),
    ):
        print(f"  {label:<22} {statistics.median(values) * 1e3:>8.3f} {percentile(values, 99) * 1e3:>8.3f}")
    idle_p99 = percentile(idle_sets, 99) * 1e3
    busy_p99 = percentile(busy_sets, 99)
    print(f"\nidle set->ack p99 {idle_p99:.3f} ms (target < 5 ms): {'OK' if idle_p99 < 5 else 'MISSED'}")
    print(
        f"under load: set->ack p99 {busy_p99 * 1e3:.2f} ms vs mean batch {batch_seconds * 1e3:.2f} ms: "
        f"{'OK, acknowledged within one batch' if busy_p99 < batch_seconds else 'MISSED'}; the next batch formed uses it"
    )
    print(f"load during the round trips: {box['s']['throughput_per_second']:.1f} req/s, {box['s']['errors']} errors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
