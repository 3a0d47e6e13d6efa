"""A real Triton Inference Server tuned online by gputuned, against its defaults and the
best static configuration, with the same model, load and machine in one run.

The model is `gputuned triton-example`'s: the built-in resnet-mini as TorchScript behind
Triton's Python backend, its config as users write it (max_batch_size 8, no dynamic
batching, one instance).

1. Defaults: goodput (requests within the SLO per second) and p99 under closed-loop load.
2. The cost of a change: the model reloaded through the repository API under the same load,
   alternating two configs: how long a reload takes, whether any request fails, and how
   long the requests caught by it wait.
3. The brute sweep: Model Analyzer's brute grid (max batch size 1-128 in powers of two x
   instance count) plus queue delays, through `gputuned sweep`'s machinery on the adapter,
   and how long it took. Instance counts stop at 3: the example's instances run one thread
   each, and this machine has 2 cores (Model Analyzer's 1-5 would only add slower points).
4. Online: a fresh daemon starts Triton from the defaults and tunes it under the load:
   goodput over time, the time until it first holds >= 95% of the sweep's best, SLO misses
   and failed requests while it explored.
5. Side by side, tuner frozen, on the same server: the tuned configuration and the sweep's
   best candidates, one window each per round, several rounds (this machine drifts by
   20-35% within a minute, so the sweep's own figures are minutes stale). The best is the
   candidate with the highest median goodput whose p99 meets the SLO; the steady-state
   figure is the median of the per-round ratios tuned / best.

Target: 4. reached in under 2 minutes, no failed request; 5. >= 0.95.

    python bench/triton_online.py [--server .triton/bin/tritonserver] [--clients 16] [--slo-ms 100] [--online 150]
                           [--candidate max_batch_size=16,streams=2,max_queue_delay_us=0 ...]

`--candidate` (repeatable) skips the sweep and compares the tuned configuration with the
given ones (for iterating on the tuner once a full run has found the best; the figures to
report come from a full run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from gputuned.control.client import SLOW_SET_SECONDS, ControlClient
from gputuned.daemon.status import worker_entry
from gputuned.knobs import parse_assignments
from gputuned.loadgen import run_load
from gputuned.sweep import SweepPoint, measure_point, parse_grid, run_sweep
from gputuned.testing.online import first_at_or_above, goodput_curve, judge, rolling, side_by_side, timed_load
from gputuned.testing.processes import running_supervising_daemon
from gputuned.triton.example import write_example

GRID = ["max_batch_size=1,2,4,8,16,32,64,128", "streams=1,2,3", "max_queue_delay_us=0,2000"]
CANDIDATES = 3
ROUNDS = 4
WINDOW_SECONDS = 5.0
RELOADS = 6


def triton_worker(args: argparse.Namespace, repository: Path) -> dict:
    return {
        "kind": "triton",
        "model": "resnet-mini",
        "device": "cpu",
        "triton_server": str(args.server.resolve()),
        "triton_repository": str(repository),
        "ping_timeout_seconds": 10.0,
    }


def reload_cost(admin: Path, url: str, clients: int, slo: float) -> dict:
    """RELOADS sets alternating two configs under load: their durations, and what the requests
    that overlapped them saw."""
    configs = [{"max_batch_size": 8, "max_queue_delay_us": 0}, {"max_batch_size": 16, "max_queue_delay_us": 1000}]
    spans: list[tuple[float, float]] = []
    done = threading.Event()

    def reloads() -> None:
        time.sleep(3)
        with ControlClient(admin) as client:
            for index in range(RELOADS):
                started = time.perf_counter()
                client.set(configs[index % 2], timeout=SLOW_SET_SECONDS)
                spans.append((started, time.perf_counter()))
                time.sleep(3)
        done.set()

    thread = threading.Thread(target=reloads)
    thread.start()
    result = asyncio.run(run_load(timed_load(url, 3 + RELOADS * 12, clients, timeline=True)))
    thread.join()
    caught = [latency for end, latency in result.timeline if any(a <= end and end - latency <= b for a, b in spans)]
    durations = [b - a for a, b in spans]
    return {
        "reload_seconds": (min(durations), statistics.median(durations), max(durations)),
        "errors": sum(result.errors.values()),
        "requests": result.ok,
        "caught": len(caught),
        "caught_over_slo": sum(1 for latency in caught if latency > slo),
        "longest": max(caught, default=0.0),
        "completed_all": done.is_set(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", type=Path, default=Path(".triton/bin/tritonserver"), help="scripts/install_triton.sh's")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--slo-ms", type=float, default=100.0)
    parser.add_argument("--online", type=float, default=150.0, help="seconds of online tuning")
    parser.add_argument("--candidate", action="append", metavar="KNOB=V,KNOB=V", help="skip the sweep; compare with these")
    args = parser.parse_args()
    if not args.server.exists():
        parser.error(f"{args.server} is missing; run scripts/install_triton.sh")
    slo = args.slo_ms / 1000

    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "models"
        write_example(repository, "resnet-mini", 8)
        worker = triton_worker(args, repository)

        # 1-3 on a server of their own, the tuner frozen.
        (Path(tmp) / "offline").mkdir()
        with running_supervising_daemon(Path(tmp) / "offline", "--log-level", "warning", tuning={"mode": "frozen"}, **worker) as (
            _,
            _metrics,
            url,
            admin,
        ):
            measure_point(timed_load(url, 3, args.clients), slo)  # warm-up
            default_throughput, default_goodput, default_p99, default_errors = measure_point(
                timed_load(url, 10, args.clients), slo
            )
            cost = reload_cost(admin, url, args.clients, slo)
            sweep_started = time.monotonic()
            if args.candidate:
                results = [SweepPoint(parse_assignments(text.split(",")), 0.0, 0.0, None, 0) for text in args.candidate]
            else:
                results = run_sweep(
                    url, admin, parse_grid(GRID), slo, args.clients, None, warmup=2.0, window=2.0, repeats=2, progress=sys.stderr
                )
            sweep_seconds = time.monotonic() - sweep_started
        sweep_errors = sum(point.errors for point in results)
        candidates = sorted(results, key=lambda p: p.goodput, reverse=True)[:CANDIDATES]

        # 4 and 5: a fresh server from the defaults, tuned online, then frozen and compared.
        (Path(tmp) / "online").mkdir()
        with running_supervising_daemon(Path(tmp) / "online", "--log-level", "warning", **worker) as (
            _,
            _metrics,
            url,
            admin,
        ):
            with ControlClient(admin) as client:
                defaults = worker_entry(client.request("status")["status"])["knobs"]
            online_wall = time.time()
            started = time.perf_counter()
            online = asyncio.run(run_load(timed_load(url, args.online, args.clients, timeline=True)))
            ended = time.perf_counter()
            with ControlClient(admin) as client:
                tuned = worker_entry(client.request("status")["status"])["knobs"]
                client.request("tune", mode="frozen")
            decisions = [
                json.loads(line) for line in (Path(tmp) / "online" / "state" / "decisions.jsonl").read_text().splitlines()
            ]
            settings = [tuned] + [{**defaults, **point.knobs} for point in candidates]
            windows = side_by_side(admin, timed_load(url, 1, args.clients), settings, slo, ROUNDS, WINDOW_SECONDS)

    verdict = judge(windows, slo)
    best_index = verdict.best
    best, best_goodput = settings[best_index], verdict.goodput[best_index]
    ratios = verdict.ratios
    curve = goodput_curve(online.timeline, started, ended, slo)
    reached = first_at_or_above(rolling(curve, 5), 0.95 * best_goodput)
    explored = [latency for done, latency in online.timeline if done < (started + reached if reached is not None else ended)]
    missed = sum(1 for latency in explored if latency > slo) / max(len(explored), 1)
    applied = [d for d in decisions if d["action"] == "apply"]

    def knobs_text(knobs: dict) -> str:
        return f"batch {knobs['max_batch_size']}, instances {knobs['streams']}, delay {knobs['max_queue_delay_us']} us"

    low, mid, high = cost["reload_seconds"]
    print(f"\nTriton 2.51 (Python backend), resnet-mini, {args.clients} closed-loop clients, SLO p99 {args.slo_ms:g} ms\n")
    print(
        f"1. defaults ({knobs_text(defaults)}): goodput {default_goodput:.1f}/s ({default_goodput / best_goodput:.2f} of the best), "
        f"throughput {default_throughput:.1f}/s, p99 {(default_p99 or 0) * 1000:.1f} ms, {default_errors} failed"
    )
    print(
        f"2. a change (the model reloaded with a new config, {RELOADS} times under load): {low:.1f} / {mid:.1f} / {high:.1f} s "
        f"(min / median / max); {cost['errors']} of {cost['requests'] + cost['errors']} requests failed; "
        f"{cost['caught']} requests overlapped a reload, {cost['caught_over_slo']} of them over the SLO, the longest "
        f"{cost['longest'] * 1000:.0f} ms"
    )
    print(
        f"3. brute sweep: {len(results)} points in {sweep_seconds:.0f} s, {sweep_errors} failed requests; "
        f"best by goodput: {knobs_text(candidates[0].knobs)} at {candidates[0].goodput:.1f}/s"
    )
    print(
        f"4. online from the defaults: first >= 95% of the best after {'never' if reached is None else f'{reached} s'} "
        f"(target < 120 s); {len(applied)} changes tried; requests over the SLO until then {missed:.1%}; "
        f"failed requests over the whole online run: {sum(online.errors.values())} of {online.ok + sum(online.errors.values())}"
    )
    print(f"   ended at {knobs_text(tuned)}")
    print(
        f"5. side by side ({ROUNDS} rounds of {WINDOW_SECONDS:g} s windows): tuned {verdict.goodput[0]:.1f}/s, p99 "
        f"{verdict.p99[0] * 1000:.1f} ms; best {knobs_text(best)} {best_goodput:.1f}/s, p99 {verdict.p99[best_index] * 1000:.1f} ms; "
        f"median ratio {statistics.median(ratios):.2f} (target >= 0.95); per round " + " ".join(f"{r:.2f}" for r in ratios)
    )
    print(
        "   every setting: "
        + "; ".join(
            f"{'tuned' if i == 0 else 'candidate'} {knobs_text(settings[i])}: {verdict.goodput[i]:.0f}/s {verdict.p99[i] * 1000:.0f} ms"
            for i in range(len(settings))
        )
    )
    print("\ndecisions (seconds from the start of the online load):")
    for d in decisions:
        if d["action"] in ("keep", "revert", "refuse", "shift"):
            print(f"  {d['t'] - online_wall:6.1f} {d['action']:<7} {d['knob']} {d['old']} -> {d['new']}: {d['reason'][:110]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
