"""The gputuned worker against the servers PyTorch users pick instead, on the same models,
load and core, in one run.

The peers:
- NVIDIA PyTriton: Triton Inference Server 2.51 with its dynamic batcher, serving a Python
  function through the Python backend (bench/pytriton_server.py): what a PyTorch user picks
  to put a model behind Triton without writing a model repository.
- Ray Serve 2.60 with `@serve.batch` (bench/ray_server.py): a deployment per model, its
  replicas batching requests behind Ray's HTTP proxy.

Per model (the built-in resnet-mini and bench/serving_models.py's transformer encoder):

1. Each peer's best configuration: a sweep over its max batch size, queue delay (batch
   wait) and instance (replica) count, each measured in two windows after a warm-up.
2. gputuned: the daemon tunes a fresh worker online from its defaults under the same load,
   then freezes it.
3. Side by side, one peer at a time beside the daemon: the tuned worker and the peer at its
   best configuration, one window each per round: goodput within the SLO, p99, and the
   median of the per-round ratios gputuned / peer.

Every server (the daemon, the worker, tritonserver and its Python backend stubs, Ray's
local cluster and replicas) runs on one core, the load generator on the other; the load
generator's share of its core is printed, so a load generator that ran out of CPU would
show. Each instance, replica and lane runs one thread.

Target: the tuned gputuned worker >= 1.0x the best peer configuration on every
model. Needs `scripts/install_triton.sh` (PyTriton in .triton/) and `scripts/install_ray.sh`
(Ray Serve in .ray/); `--peer` picks some.

    python bench/peers.py [--model M] [--peer pytriton|ray] [--clients N] [--slo-ms 100]
                          [--online 90] [--rounds 4] [--window 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from gputuned.control.client import ControlClient
from gputuned.loadgen import LoadPlan, run_load
from gputuned.sweep import measure_point
from gputuned.testing.online import timed_load
from gputuned.testing.processes import REPO_ROOT, free_port, freeze_tuner, running_supervising_daemon, serving

BENCH = Path(__file__).parent
TRITON = REPO_ROOT / ".triton"
MODELS = {  # name: (worker model spec, input shape, PyTriton factory)
    "resnet-mini": ("resnet-mini", "3,64,64", "gputuned.worker.models:build_builtin_model"),
    "encoder": ("serving_models:encoder", "32,128", "serving_models:encoder"),
}
# Closed-loop clients per model: resnet-mini computes ~350 items/s on one core here, so 32
# clients would wait ~90 ms for their turn alone and every server would sit on the 100 ms SLO.
CLIENTS = {"resnet-mini": 16, "encoder": 32}
# (max batch, queue delay or batch wait in us, instances or replicas): batching on, as the
# peers' users run them; the same grid for both.
PEER_GRID = [(8, 0, 1), (32, 2000, 1), (32, 10000, 1), (16, 2000, 2), (32, 10000, 2)]
SERVER_CORE, LOAD_CORE = 1, 0
RAY = REPO_ROOT / ".ray"


def pytriton_environment() -> dict[str, str]:
    """What `.triton/bin/tritonserver`'s wrapper sets, for PyTriton, which starts the server itself."""
    return {
        **os.environ,
        "LD_LIBRARY_PATH": str(TRITON / "dist" / "nvidia_pytriton.libs"),
        "PATH": f"{TRITON / 'python' / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(map(str, (TRITON / "dist", BENCH, REPO_ROOT))),
    }


def free_port_triple() -> int:
    """A free port whose next two are free too: PyTriton takes HTTP, gRPC and metrics there."""
    for _ in range(100):
        port = free_port()
        with contextlib.ExitStack() as held:
            try:
                for offset in (1, 2):
                    probe = held.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
        return port
    raise RuntimeError("no three consecutive free ports on loopback")


@contextlib.contextmanager
def running_pytriton(workdir: Path, factory: str, shape: str, config: tuple[int, int, int]) -> Iterator[str]:
    port = free_port_triple()
    command = ["taskset", "-c", str(SERVER_CORE), str(TRITON / "python" / "bin" / "python"), str(BENCH / "pytriton_server.py")]
    command += [factory, shape, str(port), *map(str, config)]
    base = f"http://127.0.0.1:{port}"
    log = workdir / f"pytriton-{port}.log"
    with serving(command, log, f"{base}/v2/models/model/ready", stop_timeout=30.0, env=pytriton_environment()):
        yield base


@contextlib.contextmanager
def running_ray(workdir: Path, factory: str, shape: str, config: tuple[int, int, int]) -> Iterator[str]:
    """Ray Serve (its local cluster, proxy and replicas, all on the server core)."""
    port = free_port()
    command = ["taskset", "-c", str(SERVER_CORE), str(RAY / "bin" / "python"), str(BENCH / "ray_server.py")]
    command += [factory, shape, str(port), *map(str, config)]
    base = f"http://127.0.0.1:{port}"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (BENCH, REPO_ROOT))), "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        with serving(command, workdir / f"ray-{port}.log", f"{base}/v2/models/model", stop_timeout=30.0, env=environment):
            yield base
    finally:  # what a driver stopped in the middle of its shutdown leaves behind (every Ray process here)
        subprocess.run([RAY / "bin" / "ray", "stop", "--force"], capture_output=True, timeout=60)


@dataclasses.dataclass(frozen=True)
class Peer:
    """A server PyTorch users pick instead, and how to start it at one configuration."""

    name: str
    running: Callable[[Path, str, str, tuple[int, int, int]], contextlib.AbstractContextManager[str]]
    installed: Path  # its interpreter
    install: str  # the script that installs it


PEERS = {
    "pytriton": Peer("PyTriton", running_pytriton, TRITON / "python" / "bin" / "python", "scripts/install_triton.sh"),
    "ray": Peer("Ray Serve", running_ray, RAY / "bin" / "python", "scripts/install_ray.sh"),
}


@contextlib.contextmanager
def on_core(core: int) -> Iterator[None]:
    """Processes started inside inherit `core`; this process returns to the load generator's."""
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, {LOAD_CORE})


def peer_load(base: str, seconds: float, clients: int) -> LoadPlan:
    """The peers serve the model as "model" (PyTriton restricts the repository index the load
    generator would find it with; Ray Serve has none)."""
    return dataclasses.replace(timed_load(base, seconds, clients), model="model")


Window = tuple[float, float, float]  # goodput, p99, the load generator's share of its core


def window(plan: LoadPlan, slo: float) -> Window:
    """(goodput, p99, the load generator's share of its core) of one window."""
    me = psutil.Process()
    before, started = me.cpu_times(), time.monotonic()
    _, goodput, p99, _ = measure_point(plan, slo)
    after = me.cpu_times()
    share = (after.user + after.system - before.user - before.system) / (time.monotonic() - started)
    return goodput, p99 if p99 is not None else float("inf"), share


def sweep_peer(
    peer: Peer, workdir: Path, factory: str, shape: str, args: argparse.Namespace
) -> tuple[tuple[int, int, int], float]:
    """A peer's best configuration (highest goodput whose p99 meets the SLO) and its goodput."""
    slo = args.slo_ms / 1000
    results = []
    for config in PEER_GRID:
        with peer.running(workdir, factory, shape, config) as base:
            measure_point(peer_load(base, 2.0, args.clients), slo)  # warm-up
            windows = [window(peer_load(base, args.window, args.clients), slo) for _ in range(2)]
        goodput, p99 = statistics.mean(w[0] for w in windows), max(w[1] for w in windows)
        results.append((config, goodput, p99))
        print(f"  {peer.name} batch/delay us/instances {config}: {goodput:.0f}/s, p99 {p99 * 1000:.0f} ms", file=sys.stderr)
    within = [r for r in results if r[2] <= slo] or results
    best = max(within, key=lambda r: r[1])
    return best[0], best[1]


def tune_online(daemon: Path, worker: str, admin: Path, args: argparse.Namespace) -> dict[str, int]:
    with ControlClient(admin) as client:
        client.request("tune", mode="auto", resume=True)
    asyncio.run(run_load(timed_load(worker, args.online, args.clients)))
    knobs = freeze_tuner(admin)["knobs"]
    decisions = [json.loads(line) for line in (daemon / "state" / "decisions.jsonl").read_text().splitlines()]
    kept = [f"{d['knob']} {d['old']}->{d['new']}" for d in decisions if d["action"] == "keep"]
    print(f"  gputuned kept: {', '.join(kept) or 'nothing'}", file=sys.stderr)
    return knobs


def compare(name: str, spec: str, shape: str, factory: str, args: argparse.Namespace) -> dict[str, float]:
    """Each peer swept, gputuned tuned online, then gputuned and each peer at its best side by
    side (one peer up at a time); returns gputuned / peer per peer."""
    peers = [PEERS[key] for key in args.peer]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        best: dict[str, tuple[tuple[int, int, int], float]] = {}
        for peer in peers:
            print(f"{name}: sweeping {peer.name} ({len(PEER_GRID)} configurations)", file=sys.stderr)
            best[peer.name] = sweep_peer(peer, workdir, factory, shape, args)
        (workdir / "daemon").mkdir()
        environment = {"PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{BENCH}"}
        with contextlib.ExitStack() as stack:
            with on_core(SERVER_CORE):
                _, _, worker, admin = stack.enter_context(
                    running_supervising_daemon(
                        workdir / "daemon",
                        "--log-level",
                        "warning",
                        env=environment,
                        model=spec,
                        device="cpu",
                        input_shape=shape,
                        # The test harness's 3 s is too short here: a peer starting on the same
                        # core can hold the worker's answer to a ping that long.
                        ping_timeout_seconds=10.0,
                    )
                )
            print(f"{name}: gputuned tuning online for {args.online:g} s", file=sys.stderr)
            knobs = tune_online(workdir / "daemon", worker, admin, args)
            rounds: dict[str, list[tuple[Window, Window]]] = {}
            for peer in peers:  # one peer up at a time beside the daemon
                with contextlib.ExitStack() as peer_stack:
                    with on_core(SERVER_CORE):
                        base = peer_stack.enter_context(peer.running(workdir, factory, shape, best[peer.name][0]))
                    rounds[peer.name] = [side_by_side_round(worker, base, args) for _ in range(args.rounds)]
    print(f"\n{name}, {args.clients} closed-loop clients, SLO p99 {args.slo_ms:g} ms, servers on core {SERVER_CORE}:")
    print("  gputuned tuned online to " + " ".join(f"{k}={v}" for k, v in sorted(knobs.items())))
    ratios = {}
    for peer_name, pairs in rounds.items():
        config, swept = best[peer_name]
        print(
            f"  {peer_name}'s best (batch {config[0]}, delay {config[1]} us, {config[2]} instance(s)): {swept:.0f}/s in the sweep"
        )
        for label, windows in (("gputuned", [p[0] for p in pairs]), (peer_name, [p[1] for p in pairs])):
            print(
                f"    {label:<9} goodput {statistics.median(w[0] for w in windows):6.0f}/s, p99 "
                f"{statistics.median(w[1] for w in windows) * 1000:5.1f} ms; load generator used "
                f"{statistics.median(w[2] for w in windows):.0%} of its core"
            )
        if statistics.median(theirs[0] for _, theirs in pairs) < 1.0:
            ratios[peer_name] = math.inf
            print(f"    gputuned / {peer_name}: no ratio, {peer_name} served nothing within the SLO; target >= 1.0 OK")
            continue
        per_round = [ours[0] / max(theirs[0], 1e-9) for ours, theirs in pairs]
        ratios[peer_name] = statistics.median(per_round)
        print(
            f"    gputuned / {peer_name}: {ratios[peer_name]:.2f} (per round {' '.join(f'{r:.2f}' for r in per_round)}; "
            "target >= 1.0) " + ("OK" if ratios[peer_name] >= 1.0 else "MISSED")
        )
    return ratios


def side_by_side_round(worker: str, peer: str, args: argparse.Namespace) -> tuple[Window, Window]:
    """One window of gputuned and one of the peer, each after a warm-up."""
    slo = args.slo_ms / 1000
    measure_point(timed_load(worker, 1.0, args.clients), slo)  # warm-up
    ours = window(timed_load(worker, args.window, args.clients), slo)
    measure_point(peer_load(peer, 1.0, args.clients), slo)
    return ours, window(peer_load(peer, args.window, args.clients), slo)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, help="closed-loop clients (default: 16 for resnet-mini, 32 for the encoder)")
    parser.add_argument("--slo-ms", type=float, default=100.0)
    parser.add_argument("--online", type=float, default=90.0, help="seconds of online tuning")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--window", type=float, default=4.0, help="seconds per measured window")
    parser.add_argument("--model", choices=sorted(MODELS), action="append", help="only these models (default: both)")
    parser.add_argument("--peer", choices=sorted(PEERS), action="append", help="only these peers (default: all)")
    args = parser.parse_args()
    args.peer = args.peer or sorted(PEERS)
    for key in args.peer:
        if not PEERS[key].installed.exists():
            parser.error(f"{PEERS[key].name} is not installed; run {PEERS[key].install}")
    os.sched_setaffinity(0, {LOAD_CORE})
    for name in args.model or MODELS:
        compare(name, *MODELS[name], argparse.Namespace(**{**vars(args), "clients": args.clients or CLIENTS[name]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
