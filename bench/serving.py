"""Serving efficiency: what the worker serves against what its core computes with no serving.

The worker is pinned to one core and the load generator (this process) to the other. Round
after round, side by side (this machine drifts 20-35% within a minute):
- served: the worker under closed-loop load (one item per request) at a fixed setting
  (batch 32, 10 ms queue delay, one lane, one thread): goodput in items per second;
- raw: with the worker stopped (SIGSTOP), the same model called in a plain loop on the same
  core, one thread, at batches of 8, 16 and 32 (the best of the three): items per second.
Serving efficiency = served / raw, the median of the per-round ratios, for the built-in
model and for a transformer encoder (bench/serving_models.py). The serving path's own
ceiling is the requests per second served of a model that costs next to nothing.

Target (issue 15): serving efficiency >= 0.85 on both models.

    python bench/serving.py [--rounds 4] [--window 4] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from gputuned.loadgen import run_load
from gputuned.testing.online import timed_load
from gputuned.testing.processes import REPO_ROOT, running_worker

BENCH = Path(__file__).parent
MODELS = {
    "resnet-mini": ("resnet-mini", ""),
    "encoder": ("serving_models:encoder", "32,128"),
}
PATHS = {"PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{BENCH}"}  # the worker and the raw loop find serving_models
NEARLY_FREE = ("serving_models:nearly_free", "16")
KNOBS = ("max_batch_size=32", "max_queue_delay_us=10000", "streams=1", "intra_op_threads=1")
RAW_LOOP = """
import sys, time, torch
from gputuned.worker.models import load_model, parse_shape
torch.set_num_threads(1)
spec, shape, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
model = load_model(spec, torch.device("cpu"), parse_shape(shape) if shape else None, "FP32", None, "input")
rates = []
with torch.inference_mode():
    for batch in (8, 16, 32):
        x = torch.randn(batch, *model.input.shape)
        for _ in range(5):  # oneDNN builds its kernels for a shape on the first calls
            model.module(x)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 3:
            model.module(x)
            done += batch
        rates.append(done / (time.perf_counter() - started))
print(max(rates))
"""


def pin(pid: int, core: int) -> None:
    """Every thread of `pid` on `core` (threads started later inherit it from their creator)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {core})


def raw_items_per_second(spec: str, shape: str, core: int, seconds: float) -> float:
    env = {**os.environ, **PATHS}
    command = ["taskset", "-c", str(core), sys.executable, "-c", RAW_LOOP, spec, shape, str(seconds)]
    return float(subprocess.run(command, capture_output=True, text=True, check=True, env=env, timeout=120).stdout)


def served_items_per_second(base: str, clients: int, seconds: float, slo: float) -> float:
    asyncio.run(run_load(timed_load(base, 1.0, clients)))  # warm-up
    result = asyncio.run(run_load(timed_load(base, seconds, clients)))
    return sum(1 for latency in result.latencies if latency <= slo) / (result.elapsed or 1.0)


def measure(spec: str, shape: str, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """Per round: (served items/s, raw items/s)."""
    served, raw = [], []
    extra = ["--input-shape", shape] if shape else []
    knobs = [word for knob in KNOBS for word in ("--knob", knob)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_worker(Path(tmp), "--device", "cpu", "--model", spec, *extra, *knobs, "--log-level", "warning", env=PATHS) as (
            process,
            base,
            _,
        ),
    ):
        pin(process.pid, args.worker_core)
        for _ in range(args.rounds):
            served.append(served_items_per_second(base, args.clients, args.window, args.slo_ms / 1000))
            os.kill(process.pid, signal.SIGSTOP)
            try:
                raw.append(raw_items_per_second(spec, shape, args.worker_core, args.window))
            finally:
                os.kill(process.pid, signal.SIGCONT)
    return served, raw


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--window", type=float, default=4.0, help="seconds per window")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--slo-ms", type=float, default=100.0)
    parser.add_argument("--worker-core", type=int, default=1)
    parser.add_argument("--load-core", type=int, default=0)
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.load_core})  # the load generator's own CPU stays off the worker's core
    print(f"worker on core {args.worker_core}, load generator on core {args.load_core}; worker at {' '.join(KNOBS)}")
    for name, (spec, shape) in MODELS.items():
        served, raw = measure(spec, shape, args)
        ratios = [s / r for s, r in zip(served, raw)]
        efficiency = statistics.median(ratios)
        print(
            f"{name}: served {statistics.median(served):.0f} items/s within the SLO, raw compute {statistics.median(raw):.0f} items/s; "
            f"serving efficiency {efficiency:.2f} (per round {' '.join(f'{r:.2f}' for r in ratios)}; target >= 0.85) "
            f"{'OK' if efficiency >= 0.85 else 'MISSED'}"
        )
    served, _raw = measure(*NEARLY_FREE, argparse.Namespace(**{**vars(args), "rounds": 1}))
    print(f"serving path ceiling (a nearly free model, one item per request): {served[0]:.0f} requests/s on one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
