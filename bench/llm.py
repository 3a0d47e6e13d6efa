"""vLLM tuned online by gputuned, against its defaults and a grid of its two live knobs, with
the same model, load and machine in one run.

The server: vLLM (`.vllm`, scripts/install_vllm.sh) serving a tiny random-weight Llama
written here (scripts/vllm_tiny_model.py), started with `--max-num-seqs 64` and its default
token budget: those are "the defaults". The load: closed-loop streaming completions, prompt
and output lengths drawn uniformly. Goodput: requests within both the TTFT and the TPOT
objective per second, as the load client measures each request. The TPOT objective's
default, 50 ms, leaves room above the top points' TPOT p99 on a small shared machine (about
20-25 ms there): an objective that sits on it turns the machine's drift into goodput swings
of 2x between two windows of one point, and then no side-by-side comparison settles.

1. Defaults, then the grid: admission cap x step token budget, each point set live through
   gputuned's plugin on one running server, a warm-up and a window each. Its best point is
   "the grid's best".
2. (--restart-grid) The same grid measured the way vLLM's benchmarks/auto_tune does it: a
   server started afresh with each point's flags. Its wall time, and each point's goodput
   beside the live one: a point set live serves as that point started fresh does.
3. Online, --runs times: a fresh daemon starts vLLM from the defaults and tunes it under the
   load for --tune seconds (auto mode); the time until the load's goodput first holds 95% of
   the grid's best, failed requests and restarts while tuning. Then, the tuner frozen, the
   tuned point, the grid's best and the defaults side by side, interleaved, --rounds rounds.

Targets: tuned goodput >= 0.95 of the grid's best, reached in under 3
minutes, with no failed request and no restart while tuning, in at least 4 of 5 runs.

    python bench/llm.py [--runs 5] [--tune 180] [--restart-grid] [--clients 32] [--window 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gputuned.control.client import ControlClient
from gputuned.lengths import Lengths
from gputuned.llmload import CompletionPlan, CompletionResult, run_completion_load
from gputuned.testing.processes import REPO_ROOT, free_port, running_supervising_daemon, serving, wait_for, worker_status
from gputuned.vllm.plugin import SOCKET_ENV
from gputuned.vllm.server import VllmSpec, server_command

VLLM_PYTHON = Path(os.environ.get("GPUTUNED_VLLM_PYTHON", REPO_ROOT / ".vllm" / "bin" / "python"))
BOOT = ["--max-num-seqs", "64", "--max-model-len", "1024", "--kv-cache-memory-bytes", str(512 << 20), "--enforce-eager"]
CAPS = (4, 8, 16, 32, 64)
BUDGETS = (256, 1024, 2048)
DEFAULTS = {"max_num_active_seqs": 64, "max_num_scheduled_tokens": 2048}


def plan(args: argparse.Namespace, url: str, seconds: float, timeline: bool = False) -> CompletionPlan:
    return CompletionPlan(
        url=url,
        concurrency=args.clients,
        requests=10**7,
        duration=seconds,
        timeline=timeline,
        prompt_tokens=Lengths(low=32, high=96),
        output_tokens=Lengths(low=64, high=128),
        slo_ttft=args.ttft_ms / 1000,
        slo_tpot=args.tpot_ms / 1000,
    )


def window(args: argparse.Namespace, url: str) -> dict:
    """A warm-up, then one measured window: goodput, tokens/s, TTFT and TPOT p99, failures."""
    asyncio.run(run_completion_load(plan(args, url, args.warmup)))
    result = asyncio.run(run_completion_load(plan(args, url, args.window)))
    summary = result.summary()
    return {
        "goodput": summary["goodput_per_second"],
        "tokens": summary["output_tokens_per_second"],
        "ttft_p99": summary["ttft_seconds"]["p99"],
        "tpot_p99": summary["tpot_seconds"]["p99"],
        "failed": summary["errors"],
    }


def vllm(model: Path, work: Path, extra: tuple[str, ...] = ()) -> contextlib.AbstractContextManager:
    port = free_port()
    env = {**os.environ, SOCKET_ENV: str(work / f"plugin-{port}.sock"), "VLLM_CACHE_ROOT": str(work / "cache")}
    command = server_command(VllmSpec(str(VLLM_PYTHON), str(model), "127.0.0.1", port, (*BOOT, *extra)))
    return serving(command, work / "vllm.log", f"http://127.0.0.1:{port}/health", 30, 600, env=env)


def live_grid(args: argparse.Namespace, model: Path, work: Path) -> tuple[dict, dict]:
    """The defaults and every grid point, set live on one server."""
    points = {}
    with vllm(model, work) as server:
        port = int(server.args[server.args.index("--port") + 1])
        url, socket = f"http://127.0.0.1:{port}", work / f"plugin-{port}.sock"
        defaults = window(args, url)
        for cap, budget in itertools.product(CAPS, BUDGETS):
            with ControlClient(socket) as plugin:
                plugin.set({"max_num_active_seqs": cap, "max_num_scheduled_tokens": budget})
            points[(cap, budget)] = window(args, url)
            print(f"  live cap {cap:3d} budget {budget:5d}: {describe(points[(cap, budget)])}", file=sys.stderr)
    return defaults, points


def restart_grid(args: argparse.Namespace, model: Path, work: Path) -> tuple[dict, float]:
    started = time.monotonic()
    points = {}
    for cap, budget in itertools.product(CAPS, BUDGETS):
        flags = ("--max-num-active-seqs", str(cap), "--max-num-scheduled-tokens", str(budget))
        with vllm(model, work, flags) as server:
            port = int(server.args[server.args.index("--port") + 1])
            points[(cap, budget)] = window(args, f"http://127.0.0.1:{port}")
        print(f"  fresh cap {cap:3d} budget {budget:5d}: {describe(points[(cap, budget)])}", file=sys.stderr)
    return points, time.monotonic() - started


def online(args: argparse.Namespace, model: Path, work: Path, run: int, best: tuple[int, int]) -> dict:
    """One online run: tune from the defaults, then compare side by side."""
    home = work / f"online-{run}"
    home.mkdir()
    worker: dict[str, Any] = {
        "kind": "vllm",
        "model": str(model),
        "device": "cpu",
        "vllm_python": str(VLLM_PYTHON),
        "vllm_args": BOOT,
        "ping_timeout_seconds": 15.0,
    }
    tuning = {"mode": "auto", "slo_ttft_ms": args.ttft_ms, "slo_tpot_ms": args.tpot_ms}
    env = {"VLLM_CACHE_ROOT": str(work / "cache")}
    with running_supervising_daemon(home, "--log-level", "warning", env=env, wait_ready=False, tuning=tuning, **worker) as (
        _,
        _,
        url,
        admin,
    ):
        wait_for(lambda: worker_status(admin)["state"] == "ready", 600, "vLLM to start")
        started = time.perf_counter()
        result: CompletionResult = asyncio.run(run_completion_load(plan(args, url, args.tune, timeline=True)))
        status = worker_status(admin)
        tuned = dict(status["knobs"])
        with ControlClient(admin) as client:
            client.request("tune", mode="frozen")
        restarts = status["restarts"]
        settings = {"tuned": tuned, "best": dict(zip(DEFAULTS, best)), "defaults": DEFAULTS}
        side: dict[str, list[float]] = {name: [] for name in settings}
        for _ in range(args.rounds):
            for name, knobs in settings.items():
                with ControlClient(admin) as client:
                    client.set(knobs)
                side[name].append(window(args, url)["goodput"])
        journal = home / "state" / "decisions.jsonl"  # written at the first decision: none, when the tuner changed nothing
        decisions = [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []
    curve = _curve(result.met_timeline, started, args.tune)
    return {
        "tuned": tuned,
        "side": side,
        "ratio": statistics.median(t / b for t, b in zip(side["tuned"], side["best"]) if b > 0),
        "curve": curve,
        "failed": sum(result.errors.values()),
        "failed_by_kind": dict(result.errors),
        "restarts": restarts,
        "changes": sum(1 for d in decisions if d["action"] == "apply"),
        "decisions": decisions,
    }


def _curve(timeline: list[tuple[float, bool]], started: float, seconds: float, step: float = 10.0) -> list[float]:
    """Goodput (requests within both objectives per second) in each `step` of the tuning load."""
    buckets = [0] * int(seconds // step + 1)
    for done, met in timeline:
        index = int((done - started) // step)
        if met and 0 <= index < len(buckets):
            buckets[index] += 1
    return [count / step for count in buckets]


def describe(point: dict) -> str:
    return (
        f"goodput {point['goodput']:.2f}/s, {point['tokens']:.0f} tokens/s, TTFT p99 {point['ttft_p99'] * 1000:.0f} ms, "
        f"TPOT p99 {point['tpot_p99'] * 1000:.1f} ms, {point['failed']} failed"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured per point")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--ttft-ms", type=float, default=2500.0)
    parser.add_argument("--tpot-ms", type=float, default=50.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tune", type=float, default=180.0, help="seconds of online tuning per run")
    parser.add_argument("--rounds", type=int, default=3, help="side-by-side rounds after each run")
    parser.add_argument("--restart-grid", action="store_true", help="also measure the grid restarting vLLM per point")
    parser.add_argument(
        "--best", metavar="CAP,BUDGET", help="skip the grid and compare with this point (to iterate on the tuner)"
    )
    args = parser.parse_args()
    if not VLLM_PYTHON.exists():
        parser.error(f"{VLLM_PYTHON} is missing; run scripts/install_vllm.sh")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "model"
        subprocess.run([str(VLLM_PYTHON), str(REPO_ROOT / "scripts" / "vllm_tiny_model.py"), str(model)], check=True)
        if args.best:
            cap, budget = (int(word) for word in args.best.split(","))
            best = (cap, budget)
            defaults, live = {}, {}  # type: dict[str, float], dict[tuple[int, int], dict[str, float]]
        else:
            print(f"1. live grid ({len(CAPS) * len(BUDGETS)} points)", file=sys.stderr)
            defaults, live = live_grid(args, model, work)
            best = max(live, key=lambda point: live[point]["goodput"])
        fresh, fresh_seconds = restart_grid(args, model, work) if args.restart_grid else ({}, 0.0)
        runs = []
        for number in range(args.runs):
            runs.append(online(args, model, work, number, best))
            print(f"  run {number + 1}: ratio {runs[-1]['ratio']:.2f}, tuned {runs[-1]['tuned']}", file=sys.stderr)

    print(
        f"\nvLLM 0.32 (CPU), tiny Llama, {args.clients} closed-loop streaming clients, prompts 32-96 and outputs 64-128 "
        f"tokens, objectives TTFT {args.ttft_ms:g} ms and TPOT {args.tpot_ms:g} ms\n"
    )
    if not live:
        for index, run in enumerate(runs, 1):
            print(f"run {index}: tuned {run['tuned']}, side by side {run['side']}, ratio {run['ratio']:.2f}")
            print("   goodput every 10 s: " + " ".join(f"{value:.1f}" for value in run["curve"]))
            for d in run["decisions"]:
                print(f"     {d['action']:<7} {d['knob']} {d['old']} -> {d['new']}: {d['reason'][:140]}")
        return 0
    print(f"1. defaults (cap 64, budget 2048): {describe(defaults)}")
    print(f"   the grid's best: cap {best[0]}, budget {best[1]}: {describe(live[best])}")
    for point in sorted(live, key=lambda p: -live[p]["goodput"]):
        fresh_text = f"; started fresh: {fresh[point]['goodput']:.2f}/s" if point in fresh else ""
        print(f"   cap {point[0]:3d} budget {point[1]:5d}: {describe(live[point])}{fresh_text}")
    if fresh:
        ratios = [fresh[p]["goodput"] / live[p]["goodput"] for p in live if live[p]["goodput"] > 0]
        print(
            f"2. the grid restarting vLLM per point (auto_tune's way): {fresh_seconds:.0f} s; fresh / live goodput per "
            f"point: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}"
        )
    best_goodput = live[best]["goodput"]
    passed = 0
    for index, run in enumerate(runs, 1):
        reached = next((i * 10 for i, value in enumerate(run["curve"]) if value >= 0.95 * best_goodput), None)
        ok = run["ratio"] >= 0.95 and reached is not None and reached < 180 and run["failed"] == 0 and run["restarts"] == 0
        passed += ok
        print(
            f"3. run {index}: tuned {run['tuned']} after {run['changes']} changes; side by side tuned/best "
            f"{run['ratio']:.2f} (tuned {statistics.median(run['side']['tuned']):.2f}/s, best "
            f"{statistics.median(run['side']['best']):.2f}/s, defaults {statistics.median(run['side']['defaults']):.2f}/s); "
            f">= 95% of the grid's best first after {'never' if reached is None else f'{reached} s'}; "
            f"{run['failed']} failed {run['failed_by_kind'] or ''}, {run['restarts']} restarts: "
            f"{'meets' if ok else 'misses'} the targets"
        )
        print("   goodput every 10 s: " + " ".join(f"{value:.1f}" for value in run["curve"]))
        for d in run["decisions"]:
            if d["action"] in ("keep", "revert", "refuse"):
                print(f"     {d['action']:<7} {d['knob']} {d['old']} -> {d['new']}: {d['reason'][:120]}")
    print(f"\n{passed} of {len(runs)} runs meet the targets (needed: 4 of 5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
