"""Online tuning against the offline oracle, on this machine, with the built-in model.

1. Defaults (batch 1, one lane): goodput and p99 under closed-loop load.
2. The oracle: `gputuned sweep`'s best static setting under the same load, and how long
   the sweep took; its best four points are measured again on their own, and the best
   of those that keep p99 within the SLO is the oracle (the sweep's 2 s windows can put a
   point under the SLO that lands well over it when measured alone).
3. Online: the daemon tunes a fresh worker from the defaults under the same load;
   goodput over time, the time until it first holds >= 95% of the oracle, its steady
   state, and the share of requests that missed the SLO while it explored.
4. Load shifts after convergence: clients / 4 for a while, then x4 back to the full
   load; the time until it again holds >= 95% of the oracle (measured at that load).

Prints every figure as a ratio to the oracle and writes the goodput-over-time curve
(with the oracle line) to tuning.png. Targets (issue 5): steady state >= 0.95 of the
oracle, reached in under 90 s; SLO misses while exploring under 1% of requests;
re-convergence after the shift under 30 s.

    python bench/tuning.py [--clients 64] [--slo-ms 100] [--online 120] [--shifted 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(REPO_ROOT))

from gputuned.control.client import ControlClient  # noqa: E402
from gputuned.loadgen import LoadPlan, run_load  # noqa: E402
from gputuned.sweep import measure_point, parse_grid, run_sweep  # noqa: E402
from tests.integration.processes import running_supervising_daemon, running_worker  # noqa: E402

GRID = ["max_batch_size=1,4,8,16,32,64", "streams=1,2,3", "intra_op_threads=1,2"]
ORACLE_CANDIDATES = 4  # the sweep's best points measured again on their own


def goodput_curve(timeline: list[tuple[float, float]], start: float, end: float, slo: float) -> list[float]:
    """Completions within the SLO per second, one value per second from `start`."""
    bins = [0] * int(end - start + 1)
    for done, latency in timeline:
        index = int(done - start)
        if 0 <= index < len(bins) and latency <= slo:
            bins[index] += 1
    return [float(b) for b in bins]


def rolling(values: list[float], width: int) -> list[float]:
    return [statistics.mean(values[max(0, i - width + 1): i + 1]) for i in range(len(values))]


def first_at_or_above(values: list[float], threshold: float) -> int | None:
    return next((i for i, v in enumerate(values) if v >= threshold), None)


def confirmed_oracle(base: str, control: Path, results: list, slo: float, clients: int) -> tuple:
    """The best static setting, confirmed: the sweep's best points by goodput, each measured once
    more on its own (two 5 s windows); the best confirmed goodput among those that keep p99
    within the SLO (else among all of them). A point the sweep saw under the SLO in its short
    windows can land well over it on its own; that one is no oracle."""
    confirmed = []
    for point in sorted(results, key=lambda p: p.goodput, reverse=True)[:ORACLE_CANDIDATES]:
        with ControlClient(control) as client:
            client.set(point.knobs)
        windows = [measure_point(LoadPlan(url=base, concurrency=clients, requests=10**9, duration=5), slo) for _ in range(2)]
        goodput, p99 = statistics.median(w[1] for w in windows), max(w[2] for w in windows)
        print(f"oracle candidate {point.knobs}: goodput {goodput:.0f}/s, p99 {p99 * 1000:.1f} ms on its own", file=sys.stderr)
        confirmed.append((point, goodput, p99))
    within = [c for c in confirmed if c[2] <= slo]
    return max(within or confirmed, key=lambda c: c[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--slo-ms", type=float, default=100.0)
    parser.add_argument("--online", type=float, default=120.0, help="seconds of online tuning")
    parser.add_argument("--shifted", type=float, default=60.0, help="seconds at a quarter of the clients, then as long at all of them")
    parser.add_argument("--png", type=Path, default=Path("tuning.png"))
    args = parser.parse_args()
    slo = args.slo_ms / 1000

    with tempfile.TemporaryDirectory() as tmp:
        # 1 and 2: defaults and the oracle, on a worker of their own.
        (Path(tmp) / "oracle").mkdir()
        with running_worker(Path(tmp) / "oracle", "--log-level", "warning") as (_, base, control):
            measure_point(LoadPlan(url=base, concurrency=args.clients, requests=10**9, duration=3), slo)  # warm-up
            default_throughput, default_goodput, default_p99, _ = measure_point(
                LoadPlan(url=base, concurrency=args.clients, requests=10**9, duration=10), slo)
            sweep_started = time.monotonic()
            results = run_sweep(base, control, parse_grid(GRID), slo, args.clients, None, warmup=1.0, window=2.0,
                                repeats=2, progress=sys.stderr)
            sweep_seconds = time.monotonic() - sweep_started
            oracle, oracle_goodput, oracle_p99 = confirmed_oracle(base, control, results, slo, args.clients)

        # 3 and 4: the daemon tunes a fresh worker from the defaults.
        daemon_dir = Path(tmp) / "online"
        daemon_dir.mkdir()
        with running_supervising_daemon(daemon_dir, "--log-level", "warning") as (_, _metrics, worker, admin):
            with ControlClient(admin) as client:
                client.request("tune", mode="auto", resume=True)

            async def phases() -> tuple[list, float, float, float, float]:
                started = time.perf_counter()
                first = await run_load(LoadPlan(url=worker, concurrency=args.clients, requests=10**9,
                                                duration=args.online, timeline=True))
                shifted_at = time.perf_counter()
                second = await run_load(LoadPlan(url=worker, concurrency=max(args.clients // 4, 1), requests=10**9,
                                                 duration=args.shifted, timeline=True))
                back_at = time.perf_counter()
                third = await run_load(LoadPlan(url=worker, concurrency=args.clients, requests=10**9,
                                                duration=args.shifted, timeline=True))
                return first.timeline + second.timeline + third.timeline, started, shifted_at, back_at, time.perf_counter()

            timeline, started, shifted_at, back_at, ended = asyncio.run(phases())
            with ControlClient(admin) as client:
                report = client.request("status")["status"]
            decisions = [json.loads(line) for line in (daemon_dir / "state" / "decisions.jsonl").read_text().splitlines()]
            knobs = report["knobs"]

    online = goodput_curve([e for e in timeline if e[0] < shifted_at], started, shifted_at, slo)
    after = goodput_curve([e for e in timeline if shifted_at <= e[0] < back_at], shifted_at, back_at, slo)
    back = goodput_curve([e for e in timeline if e[0] >= back_at], back_at, ended, slo)
    smooth = rolling(online, 5)
    reached = first_at_or_above(smooth, 0.95 * oracle_goodput)
    steady = statistics.mean(online[-30:])
    explored = [e for e in timeline if e[0] < (started + reached if reached is not None else shifted_at)]
    missed = sum(1 for _, latency in explored if latency > slo) / max(len(explored), 1)
    after_reached = [e for e in timeline if reached is not None and started + reached <= e[0] < shifted_at]
    missed_after = sum(1 for _, latency in after_reached if latency > slo) / max(len(after_reached), 1)
    settled = statistics.mean(after[-20:])
    after_smooth = rolling(after, 5)
    back_smooth = rolling(back, 5)
    reconverged = first_at_or_above(back_smooth, 0.95 * oracle_goodput)
    back_steady = statistics.mean(back[-20:])
    shifts = [d for d in decisions if d["action"] == "shift"]

    print(f"\nbuilt-in resnet-mini on CPU, {args.clients} closed-loop clients, SLO p99 {args.slo_ms:g} ms\n")
    print(f"1. defaults (batch 1, one lane):  goodput {default_goodput:7.1f}/s ({default_goodput / oracle_goodput:.2f} of the oracle), "
          f"throughput {default_throughput:.1f}/s, p99 {default_p99 * 1000:.1f} ms")
    print(f"2. oracle ({len(results)}-point sweep, {sweep_seconds:.0f} s): " + " ".join(f"{k}={v}" for k, v in oracle.knobs.items())
          + f": goodput {oracle_goodput:.1f}/s, p99 {oracle_p99 * 1000:.1f} ms (confirmed on its own)")
    print(f"3. online from the defaults: first >= 95% of the oracle after "
          f"{'never' if reached is None else f'{reached} s'} (target < 90 s); steady state (last 30 s) {steady:.1f}/s = "
          f"{steady / oracle_goodput:.2f} of the oracle (target >= 0.95)")
    print(f"   requests over the SLO until then: {missed:.1%} (the defaults' own misses included); "
          f"after reaching 95%, while trials went on: {missed_after:.2%} (target < 1%)")
    print("   ended at " + " ".join(f"{k}={v}" for k, v in sorted(knobs.items())))
    print(f"4. load / 4 ({max(args.clients // 4, 1)} clients): {settled:.1f}/s at the end; back to {args.clients} clients: "
          f">= 95% of the oracle again after {'never' if reconverged is None else f'{reconverged} s'} (target < 30 s), "
          f"{back_steady / oracle_goodput:.2f} of the oracle over its last 20 s; the tuner saw {len(shifts)} shift(s)")
    print("\nlast decisions:")
    for d in decisions[-8:]:
        print(f"  {d['action']:<9} {d['knob']} {d['old']} -> {d['new']}: {d['reason'][:100]}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.8))
    axes.plot(range(len(online)), online, color="tab:blue", alpha=0.35, label="goodput, per second")
    axes.plot(range(len(smooth)), smooth, color="tab:blue", label="goodput, 5 s mean")
    offset = len(online)
    axes.plot(range(offset, offset + len(after)), after, color="tab:green", alpha=0.35)
    axes.plot(range(offset, offset + len(after_smooth)), after_smooth, color="tab:green", label="clients / 4")
    second_offset = offset + len(after)
    axes.plot(range(second_offset, second_offset + len(back)), back, color="tab:purple", alpha=0.35)
    axes.plot(range(second_offset, second_offset + len(back_smooth)), back_smooth, color="tab:purple", label="clients x 4 again")
    axes.axvline(second_offset, color="gray", linestyle="--", alpha=0.6)
    axes.axhline(oracle_goodput, color="tab:orange", linestyle="--", label=f"oracle {oracle_goodput:.0f}/s")
    axes.axhline(0.95 * oracle_goodput, color="tab:orange", linestyle=":", alpha=0.6, label="95% of the oracle")
    axes.axvline(offset, color="gray", linestyle="--", alpha=0.6)
    axes.set_xlabel("seconds")
    axes.set_ylabel("requests within the SLO per second")
    axes.set_title("gputuned online tuning from the defaults")
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.png, dpi=120)
    print(f"\nwrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
