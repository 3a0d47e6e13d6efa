"""A BERT-style encoder under requests of skewed lengths: the worker tuned online, against
padding to each batch's longest request, padding to the model's maximum, and PyTriton,
on the same model, load and core, in one run.

The model: gputuned.worker.encoders:bert_encoder (4 layers, width 256, up to 512 tokens,
random weights). The load: closed-loop clients sending token ids whose lengths are drawn
from a skewed distribution (log-normal around 48 tokens, 8-512: many short, few long).
The figure: tokens per second of requests answered within the SLO (p99 objective).

(a) gputuned: the daemon tunes a fresh worker online from its defaults under the load,
    then freezes it.
(b) the same worker and knobs with one length bucket as wide as the model's maximum:
    every batch is padded to its longest request, whatever the others' lengths.
(c) the same worker and knobs, the clients padding every request to 512 tokens with the
    attention mask (what clients of a server that takes one fixed length do).
(d) PyTriton (bench/pytriton_encoder.py), the best of a small grid: max batch x queue
    delay, with inputs of variable length (its dynamic batcher joins only requests of one
    length) or padded by the clients to 512.

Then, side by side, one window each per round: (a) and every other configuration.
Serving efficiency: (a)'s tokens/s served against the model's own tokens/s on the same
core in a plain loop over batches of the same lengths, formed as (a)'s knobs form them
(bucketed and padded to their longest).

Targets: (a) >= 1.0x every other configuration, padding share
under 0.15, serving efficiency >= 0.85. Needs `scripts/install_triton.sh` (its interpreter
reaches .venv's packages: torch and transformers, installed by `scripts/setup.sh --test`).

    python bench/encoders.py [--clients 16] [--slo-ms 500] [--online 150] [--rounds 3] [--window 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from gputuned.control.client import ControlClient
from gputuned.lengths import Lengths
from gputuned.loadgen import LoadPlan, run_load
from gputuned.testing.processes import admin_status, freeze_tuner, running_supervising_daemon, serving
from gputuned.worker.encoders import MAX_LENGTH, bert_encoder

sys.path.insert(0, str(Path(__file__).parent))
from peers import LOAD_CORE, SERVER_CORE, TRITON, free_port_triple, on_core, pytriton_environment

BENCH = Path(__file__).parent
MODEL = "gputuned.worker.encoders:bert_encoder"
PYTRITON_GRID = [(8, 2000, -1), (32, 10000, -1), (8, 2000, MAX_LENGTH), (32, 10000, MAX_LENGTH)]  # batch, delay us, length


def skewed_lengths(count: int = 4000, seed: int = 0) -> Lengths:
    """Log-normal around 48 tokens, clipped to 8-512: many short requests, a few long ones."""
    rng = random.Random(seed)
    return Lengths(values=tuple(min(max(round(rng.lognormvariate(math.log(48), 0.8)), 8), MAX_LENGTH) for _ in range(count)))


@dataclasses.dataclass(frozen=True)
class Window:
    good_tokens: float  # tokens/s of requests within the SLO
    tokens: float  # tokens/s served
    p99: float
    errors: int


def window(base: str, args: argparse.Namespace, seconds: float, pad_to: int = 0, model: str | None = None) -> Window:
    plan = LoadPlan(
        url=base,
        model=model,
        concurrency=args.clients,
        requests=10**9,
        duration=seconds,
        lengths=args.lengths,
        pad_to=pad_to,
        seed=random.randrange(10**6),
    )
    result = asyncio.run(run_load(plan))
    slo, elapsed = args.slo_ms / 1000, result.elapsed or 1.0
    good = sum(tokens for tokens, latency in zip(result.tokens, result.latencies) if latency <= slo)
    return Window(good / elapsed, sum(result.tokens) / elapsed, result.percentile(99) or math.inf, sum(result.errors.values()))


def measured(base: str, args: argparse.Namespace, pad_to: int = 0, model: str | None = None) -> Window:
    window(base, args, args.warmup, pad_to, model)
    return window(base, args, args.window, pad_to, model)


@contextlib.contextmanager
def running_pytriton(workdir: Path, config: tuple[int, int, int]) -> Iterator[str]:
    port = free_port_triple()
    command = ["taskset", "-c", str(SERVER_CORE), str(TRITON / "python" / "bin" / "python"), str(BENCH / "pytriton_encoder.py")]
    command += [str(port), *map(str, config)]
    base = f"http://127.0.0.1:{port}"
    with serving(
        command, workdir / f"pytriton-{port}.log", f"{base}/v2/models/model/ready", stop_timeout=30.0, env=pytriton_environment()
    ):
        yield base


def pytriton_best(workdir: Path, args: argparse.Namespace) -> tuple[tuple[int, int, int], Window]:
    results = []
    for config in PYTRITON_GRID:
        with running_pytriton(workdir, config) as base:
            result = measured(base, args, pad_to=config[2] if config[2] > 0 else 0, model="model")
        results.append((config, result))
        print(f"  PyTriton batch {config[0]}, delay {config[1]} us, length {config[2]}: {describe(result)}", file=sys.stderr)
    return max(results, key=lambda r: r[1].good_tokens)


def describe(result: Window) -> str:
    return f"{result.good_tokens:7.0f} tokens/s within the SLO ({result.tokens:.0f} served), p99 {result.p99 * 1000:.0f} ms, {result.errors} failed"


def set_knobs(admin: Path, knobs: dict[str, int]) -> None:
    with ControlClient(admin) as client:
        client.set(knobs)


def plain_loop_tokens_per_second(knobs: dict[str, int], lengths: Lengths, seconds: float = 20.0) -> float:
    """The model's own tokens/s on this core and thread count, over batches of the load's
    lengths as the worker's knobs form them: sorted into buckets of `length_bucket`, at most
    `max_batch_size` items and `max_batch_tokens` padded tokens, padded to their longest."""
    model, rng = bert_encoder(), random.Random(1)
    torch.set_num_threads(knobs.get("intra_op_threads", 1))
    width, cap, budget = knobs["length_bucket"], knobs["max_batch_size"], knobs["max_batch_tokens"]
    tokens = computed = 0
    spent, deadline = 0.0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        sample = [lengths.draw(rng) for _ in range(256)]
        buckets: dict[int, list[int]] = {}
        for length in sample:
            buckets.setdefault((length - 1) // width, []).append(length)
        for bucket in buckets.values():
            while bucket:
                batch = [bucket.pop(0)]
                while bucket and len(batch) < cap and (len(batch) + 1) * max(*batch, bucket[0]) <= budget:
                    batch.append(bucket.pop(0))
                ids = torch.randint(1, 1000, (len(batch), max(batch)))
                started = time.perf_counter()
                with torch.inference_mode():
                    model(ids, torch.ones_like(ids), torch.zeros_like(ids))
                spent += time.perf_counter() - started
                tokens += sum(batch)
                computed += len(batch) * max(batch)
    return tokens / spent


def padding_share(admin: Path) -> float:
    """The padding share of the daemon's newest measured window of the worker."""
    performance = admin_status(admin)["workers"][0]["performance"] or {}
    return (performance.get("tokens") or {}).get("padding_share", math.nan)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--slo-ms", type=float, default=500.0)
    parser.add_argument("--online", type=float, default=150.0, help="seconds of online tuning")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    if not (TRITON / "python" / "bin" / "python").exists():
        parser.error("PyTriton is not installed; run scripts/install_triton.sh")
    args.lengths = skewed_lengths()
    os.sched_setaffinity(0, {LOAD_CORE})
    values = sorted(args.lengths.values)
    print(f"lengths: median {values[len(values) // 2]}, p90 {values[9 * len(values) // 10]}, max {values[-1]}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print("(d) PyTriton's grid", file=sys.stderr)
        best_config, best_swept = pytriton_best(workdir, args)
        (workdir / "daemon").mkdir()
        with contextlib.ExitStack() as stack:
            with on_core(SERVER_CORE):
                _, _, worker, admin = stack.enter_context(
                    running_supervising_daemon(
                        workdir / "daemon",
                        "--log-level",
                        "warning",
                        model=MODEL,
                        device="cpu",
                        ping_timeout_seconds=10.0,
                        tuning={"slo_p99_ms": args.slo_ms},
                    )
                )
            defaults = admin_status(admin)["workers"][0]["knobs"]
            print(f"(a) gputuned tuning online for {args.online:g} s from {defaults}", file=sys.stderr)
            with ControlClient(admin) as client:
                client.request("tune", mode="auto", resume=True)
            window(worker, args, args.online)
            knobs = freeze_tuner(admin, seconds=3600)["knobs"]
            decisions = [json.loads(line) for line in (workdir / "daemon" / "state" / "decisions.jsonl").read_text().splitlines()]
            kept = [f"{d['knob']} {d['old']}->{d['new']}" for d in decisions if d["action"] == "keep"]
            print(f"  tuned to {knobs}; kept {', '.join(kept) or 'nothing'}", file=sys.stderr)
            one_bucket = {**knobs, "length_bucket": MAX_LENGTH}
            rounds: dict[str, list[Window]] = {"a": [], "b": [], "c": [], "d": []}
            shares = []
            with contextlib.ExitStack() as peer_stack:
                with on_core(SERVER_CORE):
                    peer = peer_stack.enter_context(running_pytriton(workdir, best_config))
                for number in range(args.rounds):
                    set_knobs(admin, knobs)
                    rounds["a"].append(measured(worker, args))
                    shares.append(padding_share(admin))
                    rounds["c"].append(measured(worker, args, pad_to=MAX_LENGTH))
                    set_knobs(admin, one_bucket)
                    rounds["b"].append(measured(worker, args))
                    pad = best_config[2] if best_config[2] > 0 else 0
                    rounds["d"].append(measured(peer, args, pad_to=pad, model="model"))
                    print(
                        f"  round {number + 1}: " + "; ".join(f"({k}) {r[-1].good_tokens:.0f}" for k, r in rounds.items()),
                        file=sys.stderr,
                    )
                set_knobs(admin, knobs)
        with on_core(SERVER_CORE):
            plain = plain_loop_tokens_per_second({"intra_op_threads": 1, **knobs}, args.lengths)
    labels = {
        "a": "gputuned, tuned online",
        "b": "one bucket: padded to each batch's longest",
        "c": "clients pad to 512",
        "d": f"PyTriton's best (batch {best_config[0]}, delay {best_config[1]} us, length {best_config[2]})",
    }
    print(
        f"\nBERT encoder, {args.clients} closed-loop clients, lengths skewed 8-512, SLO p99 {args.slo_ms:g} ms, servers on core {SERVER_CORE}"
    )
    print(f"  gputuned tuned to {' '.join(f'{k}={v}' for k, v in sorted(knobs.items()))}")
    print(f"  PyTriton's grid best: {describe(best_swept)}")
    ours = [w.good_tokens for w in rounds["a"]]
    for key, label in labels.items():
        median = statistics.median(w.good_tokens for w in rounds[key])
        p99 = statistics.median(w.p99 for w in rounds[key]) * 1000
        errors = sum(w.errors for w in rounds[key])
        line = f"  ({key}) {label}: {median:.0f} tokens/s within the SLO, p99 {p99:.0f} ms, {errors} failed"
        if key != "a":
            ratios = [mine / max(theirs.good_tokens, 1e-9) for mine, theirs in zip(ours, rounds[key])]
            verdict = "OK" if statistics.median(ratios) >= 1.0 else "MISSED"
            line += f"; (a)/({key}) {statistics.median(ratios):.2f} (per round {' '.join(f'{r:.2f}' for r in ratios)}; target >= 1.0) {verdict}"
        print(line)
    share = statistics.median(shares)
    served = statistics.median(w.tokens for w in rounds["a"])
    print(f"  padding share of (a): {share:.3f} (target < 0.15) {'OK' if share < 0.15 else 'MISSED'}")
    efficiency = served / plain
    print(
        f"  serving efficiency of (a): {served:.0f} tokens/s served against {plain:.0f} in a plain loop = {efficiency:.2f} "
        f"(target >= 0.85) {'OK' if efficiency >= 0.85 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
