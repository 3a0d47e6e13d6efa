"""Serving efficiency: what the worker serves against what its core computes with no serving.

The worker is pinned to one core and the load generator (this process) to the other. Round
after round, side by side (this machine drifts 20-35% within a minute), at batches of 8,
16 and 32 in turn, each side for the same window right after the other:
- served: the worker under closed-loop load (one item per request) at a fixed setting
  (10 ms queue delay, one lane, one thread), the batch size set live, and at each batch
  one window under each scheduling policy of its threads (the sched_batch knob, which
  the tuner keeps where it serves more): goodput in items per second;
- raw: with the worker stopped (SIGSTOP), the same model called in a plain loop on the same
  core, one thread, in a thread of its own as a lane runs it (the main thread computes no
  faster: the encoder as fast, resnet-mini 378 against 491 items/s at batch 32), by one
  long-lived process: a fresh process per round computed resnet-mini ~25% slower than the
  same loop a few rounds on, which flattered the ratio. Both sides get a warm-up round first
  (the worker's first resnet-mini round served ~35% less than its later ones).
Each side counts at its best batch of the round, over the same windows, the served side
under each policy apart (one more window to choose from would flatter it); the target is
checked at the policy with the better median.
Serving efficiency = served / raw, the median of the per-round ratios, for the built-in
model and for a transformer encoder (bench/serving_models.py); beside it, the share of the
worker's CPU time its event loop's thread took while served (the serving path's own
share; the lanes also run slower beside it, which this does not show). Each model gets 64
closed-loop clients, two batches' worth of the largest batch: with as many clients as a
batch holds, every batch waits for the last one's clients to send again, and the core idles
for the closed loop's sake. A model the raw loop computes so slowly that 64 clients would
queue past 3/4 of the SLO (64 / its rate) gets 32: resnet-mini at ~350 items/s on a slower
machine (here it computes ~1,400).

The serving path's own ceiling: workers of a model that costs next to nothing, side by side
on the worker core, loaded in turn: the worker's CPU time per request at batch 32 and at
batch 1 (a batch per request), on uvloop, on asyncio's own loop and with its threads under
SCHED_BATCH (the sched_batch knob), interpreted (this checkout's sources without the
extension modules setup.py compiles with mypyc), and with `--before GIT_REF` the same
worker at that commit.

With --interpreted, each model is also served side by side by this checkout's worker and
its interpreted copy, at batch 32 under sched_batch=1, in windows taken in turn (A B B A):
what compiling the serving path gains where the model shares the core.

Target: serving efficiency >= 0.85 on both models.

    python bench/serving.py [--rounds 4] [--window 4] [--clients N] [--before GIT_REF]
                            [--model NAME] [--no-ceiling] [--interpreted]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from gputuned.control.client import ControlClient
from gputuned.loadgen import run_load
from gputuned.testing.online import timed_load
from gputuned.testing.processes import REPO_ROOT, running_worker
from gputuned.worker.compiled import compiled, describe

BENCH = Path(__file__).parent
MODELS = {
    "resnet-mini": ("resnet-mini", ""),
    "encoder": ("serving_models:encoder", "32,128"),
}
PATHS = {"PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{BENCH}"}  # the worker and the raw loop find serving_models
NEARLY_FREE = ("serving_models:nearly_free", "16")
# Every worker's starting setting; the batch size is then set live for each window.
KNOBS = ("max_batch_size=32", "max_queue_delay_us=10000", "streams=1", "intra_op_threads=1")
CEILING_BATCHES = (32, 1)  # the ceiling's: the per-request cost alone, and with a batch's per request
BATCHES = (8, 16, 32)  # efficiency: served and raw alike, each at its best of these
# The served side also at either scheduling policy of its threads (the sched_batch knob): the
# tuner keeps SCHED_BATCH where it serves more, so the worker's best setting includes it.
POLICIES = (0, 1)
# The raw side: a process that loads the model once, then for each "BATCH SECONDS" line on
# its stdin computes batches in a plain loop, in a thread of its own as a lane runs them,
# and prints the items per second. It waits on stdin, taking no CPU, while the worker serves.
RAW_LOOP = """
import concurrent.futures, sys, time, torch
from gputuned.worker.allocator import keep_freed_memory
from gputuned.inputs import parse_shape
from gputuned.worker.models import load_model, one_input
keep_freed_memory()  # malloc as in the worker, so the ratio measures serving, not page faults
spec, shape = sys.argv[1], sys.argv[2]
model = load_model(spec, torch.device("cpu"), one_input(parse_shape(shape)) if shape else None)

def rate(batch, seconds):
    torch.set_num_threads(1)
    x = torch.randn(batch, *model.inputs[0].shape)
    with torch.inference_mode():
        for _ in range(5):  # oneDNN builds its kernels for a shape on the first calls
            model.module(x)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model.module(x)
            done += batch
    return done / (time.perf_counter() - started)

lane = concurrent.futures.ThreadPoolExecutor(1)
for line in sys.stdin:
    batch, seconds = line.split()
    print(lane.submit(rate, int(batch), float(seconds)).result(), flush=True)
"""


def pin(pid: int, core: int) -> None:
    """Every thread of `pid` on `core` (threads started later inherit it from their creator)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {core})


@contextlib.contextmanager
def raw_loop(spec: str, shape: str, core: int) -> Iterator[Callable[[int, float], float]]:
    """A raw-compute process for `spec` on `core`; yields rate(batch, seconds) -> items/s."""
    command = ["taskset", "-c", str(core), sys.executable, "-c", RAW_LOOP, spec, shape]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **PATHS}
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        stdin, stdout = process.stdin, process.stdout

        def rate(batch: int, seconds: float) -> float:
            stdin.write(f"{batch} {seconds}\n")
            stdin.flush()
            line = stdout.readline()
            if not line:
                raise RuntimeError(f"the raw loop for {spec} exited with {process.wait()}")
            return float(line)

        try:
            yield rate
        finally:
            stdin.close()
            process.wait(timeout=60)


def closed_loop_clients(raw_rate: Callable[[int, float], float], slo: float) -> int:
    """Two batches' worth of the largest batch, or one where the raw loop computes the model
    so slowly that two would queue past 3/4 of the SLO (see the module's docstring)."""
    raw_rate(max(BATCHES), 1.0)  # warm-up
    items_per_second = raw_rate(max(BATCHES), 2.0)
    two_batches = 2 * max(BATCHES)
    return two_batches if two_batches / items_per_second <= 0.75 * slo else max(BATCHES)


def warm_up(base: str, clients: int) -> None:
    """A second of closed-loop load, unmeasured."""
    asyncio.run(run_load(timed_load(base, 1.0, clients)))


def served_items_per_second(base: str, clients: int, seconds: float, slo: float, warmed: bool = False) -> float:
    """Items/s answered within `slo` over `seconds` of closed-loop load, after `warm_up`
    unless the caller has `warmed` the worker itself."""
    if not warmed:
        warm_up(base, clients)
    result = asyncio.run(run_load(timed_load(base, seconds, clients)))
    return sum(1 for latency in result.latencies if latency <= slo) / (result.elapsed or 1.0)


def worker_arguments(spec: str, shape: str) -> list[str]:
    """`gputuned worker`'s arguments for `spec` at the bench's fixed setting, on the CPU."""
    extra = ["--input-shape", shape] if shape else []
    knobs = [word for knob in KNOBS for word in ("--knob", knob)]
    return ["--device", "cpu", "--model", spec, *extra, *knobs, "--log-level", "warning"]


def loop_thread_share(pid: int, window: Callable[[], float]) -> tuple[float, float]:
    """Runs `window` and returns what it returned, with the share of the worker's CPU time
    in it that its event loop's thread (the main thread) took; the rest is the other threads'
    (the lanes', but for the control agent's next to nothing)."""

    def seconds() -> tuple[float, float]:
        threads = psutil.Process(pid).threads()
        loop = sum(t.user_time + t.system_time for t in threads if t.id == pid)
        return loop, sum(t.user_time + t.system_time for t in threads) - loop

    loop_before, others_before = seconds()
    result = window()
    loop_after, others_after = seconds()
    loop, others = loop_after - loop_before, others_after - others_before
    return result, loop / ((loop + others) or 1.0)


def measure(
    spec: str, shape: str, args: argparse.Namespace, raw_rate: Callable[[int, float], float]
) -> tuple[dict[int, list[float]], list[float], dict[int, list[float]]]:
    """Per round: served items/s under each of POLICIES and raw items/s, each at its best
    batch of the round, the raw side from `raw_rate` (the model's raw_loop on the worker's
    core); and per served window, the event loop thread's share of the worker's CPU."""
    served: dict[int, list[float]] = {policy: [] for policy in POLICIES}
    raw: list[float] = []
    loop_shares: dict[int, list[float]] = {policy: [] for policy in POLICIES}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        process, base, client = pinned_worker(stack, tmp / "worker", REPO_ROOT, worker_arguments(spec, shape), args.worker_core)

        def side_by_side(batch: int) -> tuple[tuple[float, ...], float]:
            """(served at each of POLICIES, raw) items/s at `batch`, one window each, back to back."""
            client.set({"max_batch_size": batch})
            served_rates = []
            for policy in POLICIES:
                client.set({"sched_batch": policy})
                rate, share = loop_thread_share(
                    process.pid, lambda: served_items_per_second(base, args.clients, args.window, args.slo_ms / 1000)
                )
                served_rates.append(rate)
                loop_shares[policy].append(share)
            os.kill(process.pid, signal.SIGSTOP)
            try:
                return tuple(served_rates), raw_rate(batch, args.window)
            finally:
                os.kill(process.pid, signal.SIGCONT)

        for batch in BATCHES:  # warm-up, both sides: each reaches its speed over its first ~10 s
            side_by_side(batch)
        for _ in range(args.rounds):
            served_rates, raw_rates = zip(*(side_by_side(batch) for batch in BATCHES))
            for index, policy in enumerate(POLICIES):
                served[policy].append(max(rates[index] for rates in served_rates))
            raw.append(max(raw_rates))
            print(
                f"  {spec}, items/s at batches {BATCHES}: served "
                + ", ".join(f"sched_batch={p} {' '.join(f'{r[i]:.0f}' for r in served_rates)}" for i, p in enumerate(POLICIES))
                + f"; raw {' '.join(f'{r:.0f}' for r in raw_rates)}",
                flush=True,
            )
    return served, raw, loop_shares


def interpreted_copy(directory: Path) -> Path:
    """This checkout's sources in `directory`, without the extension modules that setup.py
    compiles (Python imports those before a source of the same name); returns the root."""
    shutil.copytree(REPO_ROOT / "gputuned", directory / "gputuned", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return directory


def pinned_worker(
    stack: contextlib.ExitStack,
    workdir: Path,
    tree: Path,
    arguments: list[str],
    core: int,
    environment: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, str, ControlClient]:
    """A worker run from the checkout at `tree`, every thread on `core`, with `environment`
    added to its own, and its control client; both end with `stack`."""
    workdir.mkdir()
    env = {"PYTHONPATH": f"{tree}{os.pathsep}{BENCH}", **(environment or {})}
    process, base, control = stack.enter_context(running_worker(workdir, *arguments, env=env, root=tree))
    pin(process.pid, core)
    return process, base, stack.enter_context(ControlClient(control))


def compiled_against_interpreted(spec: str, shape: str, args: argparse.Namespace) -> None:
    """The served rate of this checkout's worker against its interpreted copy's, side by side
    on the worker core at batch 32 under sched_batch=1, in windows taken in turn (A B B A)."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        roots = {"compiled": REPO_ROOT, "interpreted": interpreted_copy(tmp / "interpreted")}
        bases = {}
        for label, root in roots.items():
            _, base, client = pinned_worker(stack, tmp / f"{label}-worker", root, worker_arguments(spec, shape), args.worker_core)
            client.set({"max_batch_size": 32, "sched_batch": 1})
            bases[label] = base
        ratios = []
        for turn in range(args.rounds + 1):  # the first round warms both up
            rates: dict[str, float] = {label: 0.0 for label in roots}
            for label in ("compiled", "interpreted", "interpreted", "compiled"):  # drift falls on both alike
                rates[label] += served_items_per_second(bases[label], args.clients, args.window, args.slo_ms / 1000)
            if turn:
                ratios.append(rates["compiled"] / rates["interpreted"])
        print(
            f"{spec}: compiled serves {statistics.median(ratios):.3f}x its interpreted copy at batch 32 "
            f"(per round {' '.join(f'{r:.3f}' for r in ratios)})"
        )


def ceiling(args: argparse.Namespace) -> None:
    """The serving path's own cost: workers of a nearly free model side by side on the worker
    core, loaded in turn: this checkout's on uvloop, on asyncio's loop and under SCHED_BATCH,
    and `--before`'s.
    The figure is the worker's CPU time per request (the load generator, not the worker,
    runs out of CPU first here), and the requests per second one core would serve at it:
    at batch 32, where the per-request cost shows, and at batch 1, where every request also
    pays for a batch (the lane's round trip)."""
    variants = [
        ("now", REPO_ROOT, ()),
        ("now on asyncio's loop", REPO_ROOT, ("--event-loop", "asyncio")),
        ("now with sched_batch=1", REPO_ROOT, ("--knob", "sched_batch=1")),
    ]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if compiled():
            variants.append(("now interpreted (not compiled)", interpreted_copy(tmp / "interpreted"), ()))
        if args.before:
            tree = tmp / "before"
            subprocess.run(
                ["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(tree), args.before],
                check=True,
                capture_output=True,
            )
            stack.callback(subprocess.run, ["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(tree)], check=False)
            variants.append((f"before ({args.before})", tree, ()))
        workers = []
        for index, (_, tree, extra) in enumerate(variants):
            arguments = [*worker_arguments(*NEARLY_FREE), *extra]
            workers.append(pinned_worker(stack, tmp / f"worker{index}", tree, arguments, args.worker_core))
        for batch in CEILING_BATCHES:
            for _, _, client in workers:
                client.set({"max_batch_size": batch})
            cost: list[list[float]] = [[] for _ in variants]
            clients = args.clients or 32
            for _ in range(args.rounds):
                for index, (process, base, _) in enumerate(workers):
                    warm_up(base, clients)
                    worker = psutil.Process(process.pid)
                    before = worker.cpu_times()
                    result = asyncio.run(run_load(timed_load(base, args.window, clients)))
                    after = worker.cpu_times()
                    cpu = after.user + after.system - before.user - before.system
                    cost[index].append(cpu / max(len(result.latencies), 1))
            now = cost[0]
            print(
                f"serving path ceiling at batch {batch} (a nearly free model, one item per request, the worker's CPU per request):"
            )
            for (label, _, _), seconds in zip(variants, cost):
                ratios = [n / s for n, s in zip(now, seconds)]
                median = statistics.median(seconds)
                print(
                    f"  {label}: {median * 1e6:.0f} us per request = {1 / median:.0f} requests/s per core; now takes "
                    f"{statistics.median(ratios):.2f} of its CPU per request (per round {' '.join(f'{r:.2f}' for r in ratios)})"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--window", type=float, default=4.0, help="seconds per window")
    parser.add_argument(
        "--clients", type=int, help="closed-loop clients (default: 64, or 32 for a model too slow for 64 within the SLO)"
    )
    parser.add_argument("--slo-ms", type=float, default=100.0)
    parser.add_argument("--worker-core", type=int, default=1)
    parser.add_argument("--load-core", type=int, default=0)
    parser.add_argument(
        "--before", metavar="GIT_REF", help="also measure the serving path's ceiling at this commit, side by side"
    )
    parser.add_argument("--model", action="append", choices=list(MODELS), help="measure only this model (repeatable)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the serving path's ceiling")
    parser.add_argument(
        "--interpreted", action="store_true", help="also serve each model by the worker and its interpreted copy side by side"
    )
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.load_core})  # the load generator's own CPU stays off the worker's core
    print(
        f"worker on core {args.worker_core}, load generator on core {args.load_core}; worker at {' '.join(KNOBS[1:])}, batches {BATCHES}"
    )
    print(f"serving path: {describe()}")
    for name in args.model or MODELS:
        spec, shape = MODELS[name]
        with raw_loop(spec, shape, args.worker_core) as raw_rate:
            clients = args.clients or closed_loop_clients(raw_rate, args.slo_ms / 1000)
            print(f"{name}: {clients} closed-loop clients")
            model_args = argparse.Namespace(**{**vars(args), "clients": clients})
            if args.interpreted:
                compiled_against_interpreted(spec, shape, model_args)
            served, raw, loop_shares = measure(spec, shape, model_args, raw_rate)
        efficiency = {}
        for policy, rates in served.items():
            ratios = [s / r for s, r in zip(rates, raw)]
            efficiency[policy] = statistics.median(ratios)
            print(
                f"{name}, sched_batch={policy}: served {statistics.median(rates):.0f} items/s within the SLO, raw compute "
                f"{statistics.median(raw):.0f} items/s; serving efficiency {efficiency[policy]:.2f} "
                f"(per round {' '.join(f'{r:.2f}' for r in ratios)}); the event loop's thread took "
                f"{statistics.median(loop_shares[policy]):.1%} of the worker's CPU, the other threads the rest (median over windows)"
            )
        best = max(efficiency, key=efficiency.__getitem__)
        print(
            f"{name}: serving efficiency {efficiency[best]:.2f} at the worker's best setting (sched_batch={best}); "
            f"target >= 0.85 {'OK' if efficiency[best] >= 0.85 else 'MISSED'}"
        )
    if not args.no_ceiling:
        ceiling(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
