"""Two workers on one host, tuned online by one daemon, against each one's best static setting.

One daemon supervises two workers, each pinned to a core of its own: the built-in
resnet-mini (CPU-bound) and a launch-bound model (gputuned/testing/launch_bound_model.py: a fixed
5 ms per batch, as a GPU kernel launch and copy cost). Both are loaded at once, each by
its own closed-loop clients, all the way through:

1. Online: the daemon tunes both from their defaults (trials take turns on the host).
2. Each worker's best static setting: with both tuners frozen and the neighbour serving
   at its tuned setting under its load, every point of a small grid is measured on the
   worker; its best goodput within the SLO is its oracle.
3. Side by side, round after round (this machine drifts 20-35% within a minute, so only
   windows seconds apart compare): the tuned pair against the best pair, both workers at
   once. Per worker, the median of per-round ratios tuned / best; the host total likewise.
4. Interference: each worker at its tuned setting alone (the neighbour unloaded) against
   both loaded, side by side: how much one worker's load costs the other.

Target: each worker >= 0.9 of its own best, the host total >= 0.9 of the best
pair.

    python bench/many_workers.py [--clients 8] [--slo-ms 100] [--online 120] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from gputuned.control.client import ControlClient
from gputuned.daemon.status import worker_entry
from gputuned.loadgen import LoadPlan, LoadResult, run_load
from gputuned.testing.processes import admin_status, free_port, freeze_tuner, running_supervising_daemon

GRID = {"max_batch_size": [1, 4, 8, 16, 32], "max_queue_delay_us": [0, 10000]}
WINDOW_SECONDS = 3.0
WORKERS = {
    "resnet": {"model": "resnet-mini"},
    "launch": {"model": "gputuned.testing.launch_bound_model:build", "input_shape": "16"},
}


async def load_both(urls: dict[str, str], seconds: float, clients: int, loaded: set[str]) -> dict[str, LoadResult]:
    """The `loaded` workers under closed-loop load at once, each with its own clients."""
    plans = {name: LoadPlan(url=urls[name], concurrency=clients, requests=10**9, duration=seconds) for name in loaded}
    results = await asyncio.gather(*(run_load(plan) for plan in plans.values()))
    return dict(zip(plans, results))


def goodput(result: LoadResult, slo: float) -> float:
    return sum(1 for latency in result.latencies if latency <= slo) / (result.elapsed or 1.0)


def window(urls: dict[str, str], clients: int, slo: float, loaded: set[str] | None = None) -> dict[str, float]:
    """One measured window (after a 1 s warm-up): each loaded worker's goodput."""
    loaded = loaded or set(urls)
    asyncio.run(load_both(urls, 1.0, clients, loaded))
    results = asyncio.run(load_both(urls, WINDOW_SECONDS, clients, loaded))
    return {name: goodput(result, slo) for name, result in results.items()}


def set_knobs(admin: Path, name: str, knobs: dict[str, int]) -> None:
    with ControlClient(admin) as client:
        client.set(knobs, name)


def print_decisions(workers_dir: Path) -> None:
    for name in WORKERS:
        for line in (workers_dir / name / "decisions.jsonl").read_text().splitlines():
            d = json.loads(line)
            print(f"   {name} {d['action']:<7} {d['knob']} {d['old']} -> {d['new']}: {d['reason'][-90:]}", file=sys.stderr)


def best_static(
    admin: Path,
    urls: dict[str, str],
    defaults: dict[str, dict[str, int]],
    tuned: dict[str, dict[str, int]],
    clients: int,
    slo: float,
) -> dict[str, dict[str, int]]:
    """2. Each worker's best static setting over GRID, its neighbour at its tuned setting and loaded."""
    best: dict[str, dict[str, int]] = {}
    for name in WORKERS:
        scores = []
        for values in itertools.product(*GRID.values()):
            knobs = {**defaults[name], **dict(zip(GRID, values))}
            set_knobs(admin, name, knobs)
            measured = window(urls, clients, slo)[name]
            scores.append((measured, knobs))
            print(f"   {name} {dict(zip(GRID, values))}: {measured:.0f}/s", file=sys.stderr)
        best[name] = max(scores, key=lambda score: score[0])[1]
        set_knobs(admin, name, tuned[name])
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients per worker")
    parser.add_argument("--slo-ms", type=float, default=100.0)
    parser.add_argument("--online", type=float, default=120.0, help="seconds of online tuning")
    parser.add_argument("--rounds", type=int, default=3, help="side-by-side rounds")
    args = parser.parse_args()
    slo = args.slo_ms / 1000
    cores = os.cpu_count() or 1
    ports = {name: free_port() for name in WORKERS}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    definitions = [
        {"name": name, "listen": f"127.0.0.1:{ports[name]}", "cpus": str(index % cores), **settings}
        for index, (name, settings) in enumerate(WORKERS.items())
    ]
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_supervising_daemon(Path(tmp), workers=definitions, tuning={"slo_p99_ms": args.slo_ms}) as (
            _,
            _m,
            _w,
            admin,
        ),
    ):
        defaults = {name: worker_entry(admin_status(admin), name)["knobs"] for name in WORKERS}
        at_defaults = window(urls, args.clients, slo)
        print(
            f"1. defaults: {', '.join(f'{n} {g:.0f}/s' for n, g in at_defaults.items())}; tuning online for {args.online:g} s",
            file=sys.stderr,
        )
        asyncio.run(load_both(urls, args.online, args.clients, set(WORKERS)))
        tuned = {name: freeze_tuner(admin, name)["knobs"] for name in WORKERS}
        print_decisions(Path(tmp) / "state" / "workers")
        best = best_static(admin, urls, defaults, tuned, args.clients, slo)

        # 3. Side by side: the tuned pair against the best pair; 4. each tuned worker alone.
        rounds: dict[str, list[dict[str, float]]] = {"tuned": [], "best": [], "alone": []}
        for _ in range(args.rounds):
            for label, knobs in (("tuned", tuned), ("best", best)):
                for name in WORKERS:
                    set_knobs(admin, name, knobs[name])
                rounds[label].append(window(urls, args.clients, slo))
            for name in WORKERS:
                set_knobs(admin, name, tuned[name])
            rounds["alone"].append({name: window(urls, args.clients, slo, {name})[name] for name in WORKERS})

    def ratio(worker: str | None, over: str) -> float:
        def value(window_: dict[str, float]) -> float:
            return sum(window_.values()) if worker is None else window_[worker]

        return statistics.median(value(t) / max(value(o), 1e-9) for t, o in zip(rounds["tuned"], rounds[over]))

    print(f"\ntwo workers on {cores} cores, {args.clients} closed-loop clients each, SLO p99 {args.slo_ms:g} ms")
    for name in WORKERS:
        tuned_goodput = statistics.median(r[name] for r in rounds["tuned"])
        best_goodput = statistics.median(r[name] for r in rounds["best"])
        worker_ratio = ratio(name, "best")
        print(
            f"{name}: defaults {at_defaults[name]:.0f}/s; tuned {tuned[name]} {tuned_goodput:.0f}/s; best static {best[name]} "
            f"{best_goodput:.0f}/s; median ratio {worker_ratio:.2f} (target >= 0.9) {'OK' if worker_ratio >= 0.9 else 'MISSED'}"
        )
    host_ratio = ratio(None, "best")
    print(
        f"host total: tuned / best pair median ratio {host_ratio:.2f} (target >= 0.9) {'OK' if host_ratio >= 0.9 else 'MISSED'}"
    )
    for name in WORKERS:
        alone = statistics.median(r[name] for r in rounds["alone"])
        shared = statistics.median(r[name] for r in rounds["tuned"])
        print(
            f"interference on {name}: {shared:.0f}/s with its neighbour loaded, {alone:.0f}/s alone = {shared / max(alone, 1e-9):.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
