"""Online tuning against the offline oracle, on this machine, with the built-in model.

1. Defaults (batch 1, one lane): goodput and p99 under closed-loop load.
2. The sweep: `gputuned sweep` over batch x lanes x threads x queue delay under the same
   load, and how long it took; its best points by goodput are the oracle's candidates.
3. Online: the daemon tunes a fresh worker from the defaults under the same load;
   goodput over time, the time until it first holds >= 95% of the oracle, and the share
   of requests that missed the SLO while it explored.
4. Load shifts after convergence: the arrival rate / 4 (open loop at a quarter of the
   goodput the tuner reached) for a while, then x4 back to the closed-loop load; the
   shifts the tuner saw and the time until it again holds >= 95% of the oracle. (Clients
   / 4 in a closed loop moves the arrival rate by only ~40%: latency falls with them.)
5. Side by side, on the same worker with the tuner frozen: the tuned setting and each
   candidate, one window each per round, several rounds. The oracle is the candidate with
   the best median goodput whose p99 stays within the SLO, and the steady-state figure is
   the median of the per-round ratios tuned / oracle.

Why side by side: this machine's speed drifts by 20-35% within a minute (the same setting
measured 572/s then 761/s forty seconds later), so an oracle measured minutes before the
online run says more about the drift than about the tuner. Paired windows seconds apart
cancel it.

Prints every figure as a ratio to the oracle and writes the goodput-over-time curve
(with the oracle line) to tuning.png. Target: steady state >= 0.95 of the
oracle, reached in under 90 s; SLO misses while exploring under 1% of requests;
re-convergence after the shift under 30 s.

Pick the load so that the best settings can meet the SLO on the machine at hand: on a
slow day here every setting breaks 100 ms at 64 clients, and goodput is then mostly noise.

    python bench/tuning.py [--model resnet-mini|encoder] [--clients 32] [--slo-ms 100]
                           [--online 120] [--shifted 60] [--runs N]
                           [--oracle max_batch_size=8 streams=2 intra_op_threads=1]

`--model encoder` tunes the second model of bench/serving_models.py (a transformer
encoder, 32 tokens of 128 features per request) instead of the built-in resnet-mini.

`--oracle` skips the sweep and takes the given setting as the only candidate (for
iterating on the tuner once a full run has found the oracle; the figures to report come
from a full run).

`--runs N` asks whether the tuner lands on the optimum every time rather than once: the
online phase from the defaults N times, each on a fresh daemon and worker and judged side
by side against the oracle as in 5 (no load shifts, no plot). It prints the N ratios, how
many reach 0.95 (target: 9 of 10, each run under 5 minutes), and each run's trials in
order (`~`: judged by interleaved windows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gputuned.control.client import ControlClient
from gputuned.daemon.status import worker_entry
from gputuned.knobs import KnobError, parse_assignments
from gputuned.loadgen import run_load
from gputuned.sweep import SweepPoint, measure_point, parse_grid, run_sweep
from gputuned.testing.online import Verdict, first_at_or_above, goodput_curve, judge, rolling, side_by_side, timed_load
from gputuned.testing.processes import REPO_ROOT, freeze_tuner, running_supervising_daemon, running_worker

BENCH = Path(__file__).parent
MODELS = {  # name: (worker model spec, input shape or None for the model's own)
    "resnet-mini": ("resnet-mini", None),
    "encoder": ("serving_models:encoder", "32,128"),
}
GRID = ["max_batch_size=1,4,8,16,32,64", "streams=1,2,3", "intra_op_threads=1,2", "max_queue_delay_us=0,10000,30000"]
ORACLE_CANDIDATES = 4  # the sweep's best points, measured again side by side with the tuned setting
RUN_CANDIDATES = 2  # with --runs: fewer, so that a run (online phase and side by side) stays under 5 minutes
SIDE_BY_SIDE_ROUNDS = 5  # more rounds: less drift in the ratio, less luck in which candidate wins
SIDE_BY_SIDE_SECONDS = 3.0


def worker_setup(model: str) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """A model's worker: (its options under the daemon's [worker], the same as `gputuned
    worker` arguments, the environment that finds bench/serving_models.py)."""
    spec, shape = MODELS[model]
    options: dict[str, Any] = {"model": spec, "device": "cpu", **({"input_shape": shape} if shape else {})}
    arguments = ["--model", spec, "--device", "cpu", *(["--input-shape", shape] if shape else [])]
    return options, arguments, {"PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{BENCH}"}


def repeat_online(args: argparse.Namespace, candidates: list[SweepPoint]) -> int:
    """The online phase from the defaults, `args.runs` times on fresh daemons, each judged
    side by side against the oracle's candidates; prints the ratios."""
    options, _, environment = worker_setup(args.model)
    ratios: list[float] = []
    for run in range(args.runs):
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            with running_supervising_daemon(workdir, "--log-level", "warning", env=environment, **options) as (
                _,
                _,
                worker,
                admin,
            ):
                with ControlClient(admin) as client:
                    defaults = worker_entry(client.request("status")["status"])["knobs"]
                    client.request("tune", mode="auto", resume=True)
                online_wall = time.time()  # decisions carry wall-clock times
                asyncio.run(run_load(timed_load(worker, args.online, args.clients)))
                knobs, decisions, settings, verdict = judge_tuned(admin, worker, workdir, defaults, candidates, args)
        ratios.append(statistics.median(verdict.ratios))
        converged = [d["t"] - online_wall for d in decisions if d["action"] == "converge"]
        trials = sum(1 for d in decisions if d["action"] == "apply")
        interleaved = sum(
            1 for d in decisions if d["action"] in ("keep", "revert") and (d.get("evidence") or {}).get("interleaved")
        )
        print(
            f"run {run + 1}: {ratios[-1]:.2f} of the oracle (batch/lanes/threads/delay us {describe(knobs)} against "
            f"{describe(settings[verdict.best])}); "
            f"{trials} trials ({interleaved} judged by interleaved windows), "
            f"converged {'never' if not converged else f'after {converged[0]:.0f} s'}; "
            f"{time.monotonic() - started:.0f} s in all",
            flush=True,
        )
        print(f"  {trail(decisions)}", flush=True)
    reached = sum(1 for ratio in ratios if ratio >= 0.95)
    print(
        f"\n{args.model}, {args.clients} closed-loop clients, SLO p99 {args.slo_ms:g} ms, {args.online:g} s online per run: "
        f"steady state / oracle side by side, {args.runs} runs: {' '.join(f'{r:.2f}' for r in ratios)}; "
        f">= 0.95 in {reached} of {args.runs} (target: 9 of 10)"
    )
    return 0


def judge_tuned(
    admin: Path, worker: str, daemon_dir: Path, defaults: dict[str, int], candidates: list[SweepPoint], args: argparse.Namespace
) -> tuple[dict[str, int], list[dict[str, Any]], list[dict[str, int]], Verdict]:
    """5. The tuner frozen, the tuned setting and the candidates (over the defaults for knobs
    the grid leaves out) side by side; returns the tuned knobs, the decisions, the settings
    compared (tuned first) and the verdict."""
    slo = args.slo_ms / 1000
    knobs = freeze_tuner(admin)["knobs"]
    decisions = [json.loads(line) for line in (daemon_dir / "state" / "decisions.jsonl").read_text().splitlines()]
    settings = [knobs] + [{**defaults, **point.knobs} for point in candidates]
    windows = side_by_side(admin, timed_load(worker, 1, args.clients), settings, slo, SIDE_BY_SIDE_ROUNDS, SIDE_BY_SIDE_SECONDS)
    return knobs, decisions, settings, judge(windows, slo)


def trail(decisions: list[dict[str, Any]]) -> str:
    """The trials of one run in order, one word each: what a run that missed tried, and how
    each was judged (a single window, or interleaved windows: `~`)."""
    words = []
    for d in decisions:
        if d["action"] in ("keep", "revert"):
            # A revert records the value tried as `old` and the one put back as `new`.
            tried, before = (d["new"], d["old"]) if d["action"] == "keep" else (d["old"], d["new"])
            words.append(
                f"{d['knob']} {before}->{tried} {d['action']}{'~' if (d.get('evidence') or {}).get('interleaved') else ''}"
            )
    return ", ".join(words)


def describe(knobs: dict[str, int]) -> str:
    """batch/lanes/threads/queue delay, the grid's knobs in its order."""
    return "/".join(str(knobs[name]) for name in ("max_batch_size", "streams", "intra_op_threads", "max_queue_delay_us"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet-mini")
    parser.add_argument("--runs", type=int, default=1, help="the online phase this many times, judged side by side each")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--slo-ms", type=float, default=100.0)
    parser.add_argument("--online", type=float, default=120.0, help="seconds of online tuning")
    parser.add_argument(
        "--shifted", type=float, default=60.0, help="seconds at a quarter of the arrival rate, then as long at the full load"
    )
    parser.add_argument("--png", type=Path, default=Path("tuning.png"))
    parser.add_argument(
        "--oracle", nargs="+", metavar="KNOB=VALUE", help="take this setting as the only candidate instead of sweeping"
    )
    args = parser.parse_args()
    slo = args.slo_ms / 1000
    try:
        oracle_knobs = parse_assignments(args.oracle) if args.oracle else None
    except KnobError as exc:
        parser.error(str(exc))

    with tempfile.TemporaryDirectory() as tmp:
        # 1 and 2: the defaults and the sweep, on a worker of their own.
        (Path(tmp) / "oracle").mkdir()
        options, arguments, environment = worker_setup(args.model)
        with running_worker(Path(tmp) / "oracle", "--log-level", "warning", *arguments, env=environment) as (_, base, control):
            measure_point(timed_load(base, 3, args.clients), slo)  # warm-up
            default_throughput, default_goodput, default_p99, _ = measure_point(timed_load(base, 10, args.clients), slo)
            sweep_started = time.monotonic()
            if oracle_knobs:
                results = [SweepPoint(oracle_knobs, 0.0, 0.0, None, 0)]
            else:
                results = run_sweep(
                    base,
                    control,
                    parse_grid(GRID),
                    slo,
                    args.clients,
                    None,
                    warmup=1.0,
                    window=2.0,
                    repeats=2,
                    progress=sys.stderr,
                )
            sweep_seconds = time.monotonic() - sweep_started
            candidates = sorted(results, key=lambda p: p.goodput, reverse=True)[:ORACLE_CANDIDATES]
        if args.runs > 1:
            candidates = candidates[:RUN_CANDIDATES]
            print(f"oracle candidates: {', '.join(' '.join(f'{k}={v}' for k, v in p.knobs.items()) for p in candidates)}")
            return repeat_online(args, candidates)

        # 3 and 4: the daemon tunes a fresh worker from the defaults.
        daemon_dir = Path(tmp) / "online"
        daemon_dir.mkdir()
        with running_supervising_daemon(daemon_dir, "--log-level", "warning", env=environment, **options) as (
            _,
            _metrics,
            worker,
            admin,
        ):
            with ControlClient(admin) as client:
                defaults = worker_entry(client.request("status")["status"])["knobs"]
                client.request("tune", mode="auto", resume=True)

            async def phases() -> tuple[list, float, float, float, float, float]:
                started = time.perf_counter()
                first = await run_load(timed_load(worker, args.online, args.clients, timeline=True))
                shifted_at = time.perf_counter()
                reached_rate = statistics.mean(goodput_curve(first.timeline, started, shifted_at, slo)[-30:])
                second = await run_load(timed_load(worker, args.shifted, rate=reached_rate / 4, timeline=True))
                back_at = time.perf_counter()
                third = await run_load(timed_load(worker, args.shifted, args.clients, timeline=True))
                timeline = first.timeline + second.timeline + third.timeline
                return timeline, started, shifted_at, back_at, time.perf_counter(), reached_rate / 4

            online_wall = time.time()  # decisions carry wall-clock times
            timeline, started, shifted_at, back_at, ended, quarter_rate = asyncio.run(phases())
            knobs, decisions, settings, verdict = judge_tuned(admin, worker, daemon_dir, defaults, candidates, args)

    oracle_index = verdict.best
    oracle, oracle_goodput, oracle_p99 = settings[oracle_index], verdict.goodput[oracle_index], verdict.p99[oracle_index]
    round_ratios = verdict.ratios
    steady_ratio = statistics.median(round_ratios)

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
    quarter_latencies = sorted(latency for done, latency in timeline if back_at - 20 <= done < back_at)
    quarter_p99 = quarter_latencies[int(0.99 * (len(quarter_latencies) - 1))] if quarter_latencies else float("nan")
    after_smooth = rolling(after, 5)
    back_smooth = rolling(back, 5)
    reconverged = first_at_or_above(back_smooth, 0.95 * oracle_goodput)
    back_steady = statistics.mean(back[-20:])
    shifts = [d for d in decisions if d["action"] == "shift"]

    print(f"\n{args.model} on CPU, {args.clients} closed-loop clients, SLO p99 {args.slo_ms:g} ms\n")
    print(
        f"1. defaults (batch 1, one lane):  goodput {default_goodput:7.1f}/s ({default_goodput / oracle_goodput:.2f} of the oracle), "
        f"throughput {default_throughput:.1f}/s, p99 {(default_p99 or 0.0) * 1000:.1f} ms"
    )
    print(
        f"2. oracle ({len(results)}-point sweep, {sweep_seconds:.0f} s; the best of its top {len(candidates)} side by side): "
        + " ".join(f"{k}={v}" for k, v in sorted(oracle.items()))
        + f": goodput {oracle_goodput:.1f}/s, p99 {oracle_p99 * 1000:.1f} ms"
    )
    print(
        f"3. online from the defaults: first >= 95% of the oracle after "
        f"{'never' if reached is None else f'{reached} s'} (target < 90 s); last 30 s of the online run {steady:.1f}/s = "
        f"{steady / oracle_goodput:.2f} of the oracle's side-by-side figure (the machine drifts in between)"
    )
    print(
        f"   requests over the SLO until then: {missed:.1%} (the defaults' own misses included); "
        f"after reaching 95%, while trials went on: {missed_after:.2%} (target < 1%)"
    )
    print("   ended at " + " ".join(f"{k}={v}" for k, v in sorted(knobs.items())))
    print(
        f"   steady state, side by side with the oracle ({SIDE_BY_SIDE_ROUNDS} rounds of {SIDE_BY_SIDE_SECONDS:g} s windows): "
        f"goodput {verdict.goodput[0]:.1f}/s, p99 {verdict.p99[0] * 1000:.1f} ms, median ratio {steady_ratio:.2f} of the "
        f"oracle (target >= 0.95); per round " + " ".join(f"{r:.2f}" for r in round_ratios)
    )
    print(
        "   every setting side by side (median goodput, median p99): "
        + "; ".join(
            f"{'tuned' if i == 0 else 'candidate'} {describe(settings[i])}: {verdict.goodput[i]:.0f}/s {verdict.p99[i] * 1000:.0f} ms"
            for i in range(len(settings))
        )
        + " (batch/lanes/threads/queue delay us)"
    )
    print(
        f"4. arrivals / 4 (open loop, {quarter_rate:.0f}/s): goodput {settled:.1f}/s at the end, p99 {quarter_p99 * 1000:.1f} ms;"
        f" back to {args.clients} clients: "
        f">= 95% of the oracle again after {'never' if reconverged is None else f'{reconverged} s'} (target < 30 s), "
        f"{back_steady / oracle_goodput:.2f} of the oracle over its last 20 s; the tuner saw {len(shifts)} shift(s)"
    )
    print("\ndecisions (seconds from the start of the online load):")
    for d in decisions:
        if d["action"] in ("keep", "revert", "shift", "refuse"):
            batch = f" (batches of {d['baseline']['mean_batch']})" if d["baseline"] else ""
            print(
                f"  {d['t'] - online_wall:6.1f} {d['action']:<7} {d['knob']} {d['old']} -> {d['new']}{batch}: {d['reason'][:110]}"
            )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.8))
    axes.plot(range(len(online)), online, color="tab:blue", alpha=0.35, label="goodput, per second")
    axes.plot(range(len(smooth)), smooth, color="tab:blue", label="goodput, 5 s mean")
    offset = len(online)
    axes.plot(range(offset, offset + len(after)), after, color="tab:green", alpha=0.35)
    axes.plot(range(offset, offset + len(after_smooth)), after_smooth, color="tab:green", label="arrivals / 4")
    second_offset = offset + len(after)
    axes.plot(range(second_offset, second_offset + len(back)), back, color="tab:purple", alpha=0.35)
    axes.plot(range(second_offset, second_offset + len(back_smooth)), back_smooth, color="tab:purple", label="x 4 again")
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
