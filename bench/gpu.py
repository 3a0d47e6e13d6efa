"""The GPU check: gputuned on a real NVIDIA GPU, every figure printed, a wrong one failing.

Five phases (--phases, all by default), each on its own daemon:

1. monitor: `gputuned run --no-worker` sampling at 1 Hz, its /metrics read while
   `nvidia-smi --query-gpu` is read at the same moment, several times: utilisation, memory
   used and total, power, temperature, SM clock, PCIe generation and width must agree
   within each field's tolerance (gputuned/testing/gpu_check.py); every per-GPU and PCIe
   family must be there with a plausible value, or be refused by the driver (the daemon
   logs each NVML reading the driver does not support; the check lists them); the
   daemon's CPU share over a quiet window and its scrape latency.
2. worker: the built-in model and torchvision's ResNet-50 (random weights) served on
   cuda:N under closed-loop load, with two lanes (CUDA streams) and the pinned pool:
   goodput and p99, lanes running, pool hits, the host-to-device bytes the worker counted
   against the growth of NVML's PCIe receive counter over the same interval, and the
   worker's own GPU memory as NVML reports it per process.
3. signals: ResNet-50 served on cuda:N, the GPU read at rest and then under closed-loop
   load: SM activity and occupancy, tensor and DRAM activity (GPM, Hopper and newer) must
   be near zero at rest, higher under the load, and SM activity no more than the time a
   kernel ran; the energy charged to the worker (the GPU's only process) and the GPU's
   energy counter must agree with its power over time within 20%; energy per request,
   NVLink rates and the time the gpm collector takes per tick are printed.
4. tuning: ResNet-50 as bench/tuning.py does on the CPU: the defaults, a sweep's best
   static setting, online tuning from the defaults; the goodput ratios side by side, the
   time to 95% of the sweep's best, GPU utilisation at the defaults and tuned. Targets:
   tuned >= 2.3x the defaults' goodput, GPU utilisation >= 90% at the tuned setting.
5. oom: the worker capped (`gpu_memory_fraction`, torch's per-process memory fraction)
   between what batches of B and 2B need, under load that fills batches of B, tuning on:
   the guard must try 2B, see the out-of-memory events, go back to B and learn a ceiling
   below 2B, while the worker stays up (same pid) and serves on.

Exit status: 0 when every check passed, 1 when one failed (each printed as FAIL), 2 when a
phase cannot run (no CUDA device for phases 2-5). Without a GPU, phase 1 runs against the
fake NVML and a fake nvidia-smi, as the tests do:

    python bench/gpu.py --phases monitor --nvml-module gputuned.testing.fake_nvml:hgx8 \\
        --smi "python -m gputuned.testing.fake_nvidia_smi"

    python bench/gpu.py [--gpu 0] [--clients 64] [--items 4] [--online 90] [--slo-ms 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from gputuned.collectors import gpm, nvml
from gputuned.control.client import ControlClient
from gputuned.daemon.status import worker_entry
from gputuned.loadgen import run_load
from gputuned.sweep import best_point, measure_point, run_sweep
from gputuned.testing.gpu_check import (
    GPM_SERIES,
    SMI_QUERY,
    compare,
    copy_agreement,
    disagreements,
    energy_agreement,
    gpm_verdict,
    implausible,
    missing_families,
    oom_verdict,
    parse_smi_csv,
    per_gpu,
    refused_readings,
)
from gputuned.testing.online import first_at_or_above, goodput_curve, rolling, side_by_side, timed_load
from gputuned.testing.processes import admin_status, free_port, freeze_tuner, http_get, running_daemon, running_supervising_daemon

PHASES = ("monitor", "worker", "signals", "tuning", "oom")
WORKER = "gpu"
RESNET50 = ("gputuned.testing.resnet50:build", "3,224,224")
MODELS = {"resnet-mini": ("resnet-mini", ""), "resnet50": RESNET50}
SWEEP_GRID = {"max_batch_size": [1, 8, 16, 32, 64, 128], "streams": [1, 2, 4], "max_queue_delay_us": [0, 5000]}
TARGET_GAIN = 2.3
TARGET_UTILIZATION = 0.9


@dataclass
class Verdicts:
    """What failed, printed as it is found and counted for the exit status."""

    failures: list[str] = field(default_factory=list)

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.fail(what)

    def fail(self, what: str) -> None:
        self.failures.append(what)
        print(f"FAIL: {what}", flush=True)


def figure(label: str, text: str) -> None:
    print(f"  {label}: {text}", flush=True)


def series(text: str, name: str, **labels: str) -> float | None:
    """The sum of `name`'s samples whose labels include `labels` (None if there are none)."""
    found = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(found) if found else None


def per_gpu_instance(text: str, name: str) -> dict[str, float]:
    """A GPM series of each whole GPU (gpu_instance ""): gpu -> value."""
    return {
        sample.labels["gpu"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels.get("gpu_instance") == ""
    }


def read_smi(command: list[str]) -> list[dict[str, float | None]]:
    done = subprocess.run(
        [*command, f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} exited {done.returncode}: {done.stderr.strip()}")
    return parse_smi_csv(done.stdout)


class Poller(threading.Thread):
    """Reads some of the daemon's series twice a second, so a window's mean, or a counter's
    growth over it, can be taken. `watched` maps a key to (series, labels)."""

    def __init__(self, metrics_url: str, watched: dict[str, tuple[str, dict[str, str]]]) -> None:
        super().__init__(daemon=True)
        self._url, self._watched = metrics_url, watched
        self._readings: dict[str, list[tuple[float, float]]] = {key: [] for key in watched}
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(OSError):
                text, at = http_get(self._url), time.monotonic()
                for key, (name, labels) in self._watched.items():
                    value = series(text, name, **labels)
                    if value is not None:
                        self._readings[key].append((at, value))

    def readings(self, key: str, start: float, end: float) -> list[tuple[float, float]]:
        return [(at, value) for at, value in self._readings[key] if start <= at <= end]

    def mean(self, key: str, start: float, end: float) -> float | None:
        values = [value for _, value in self.readings(key, start + 1.0, end)]  # a reading covers the second before
        return statistics.mean(values) if values else None

    def growth(self, key: str, start: float, end: float) -> tuple[float, float, float] | None:
        """A counter's (growth, first reading's time, last reading's time) within the window."""
        points = self.readings(key, start, end)
        return None if len(points) < 2 else (points[-1][1] - points[0][1], points[0][0], points[-1][0])

    def stop(self) -> None:
        self._stop.set()


def utilization_poller(metrics_url: str, gpu: int) -> Poller:
    return Poller(metrics_url, {"utilization": ("gputuned_gpu_utilization_ratio", {"gpu": str(gpu)})})


# --- 1. monitoring against the driver -------------------------------------------------------------


def monitor(args: argparse.Namespace, verdicts: Verdicts) -> None:
    print("1. monitoring: the daemon's series against nvidia-smi", flush=True)
    nvml = ("--nvml-module", args.nvml_module) if args.nvml_module else ()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "daemon.log"
        with running_daemon(*nvml, "--log-level", "info", log=log) as (process, url):
            time.sleep(3)  # past start-up and the first samples
            rounds, smi, text = [], [], ""
            for _ in range(args.reads):
                smi = read_smi(args.smi)
                text = http_get(url)
                rounds.append(compare(per_gpu(text), smi))
                time.sleep(1)
            daemon = per_gpu(text)
            gpus = [str(index) for index in range(len(smi))]
            for gpu in gpus:  # the last read, daemon / nvidia-smi in nvidia-smi's units
                read = [a for a in rounds[-1] if a.gpu == gpu]
                figure(
                    f"GPU {gpu}",
                    ", ".join(
                        f"{a.field} {a.daemon:g}/{a.smi:g}"
                        if a.smi is not None and a.daemon is not None
                        else f"{a.field} {a.daemon}/{a.smi}"
                        for a in read
                    ),
                )
            verdicts.expect(bool(smi), "nvidia-smi reported no GPU")
            verdicts.expect(
                sorted(daemon.get("gputuned_gpu_memory_total_bytes", {})) == gpus,
                f"the daemon sees GPUs {sorted(daemon.get('gputuned_gpu_memory_total_bytes', {}))}, nvidia-smi {gpus}",
            )
            for problem in disagreements(rounds):
                verdicts.fail(problem)
            log_text = log.read_text()
            refused = refused_readings(log_text)
            figure("NVML readings the driver refused", ", ".join(f"GPU {g} {f}" for g, f in sorted(refused)) or "none")
            for collector in ("nvml", "gpm", "pcie"):
                seconds = series(text, "gputuned_collector_duration_seconds", collector=collector)
                figure(f"{collector} collector", "-" if seconds is None else f"{seconds * 1000:.2f} ms per tick (all GPUs)")
            gpm_readings = per_gpu_instance(text, gpm.SM_ACTIVE.name)
            figure("GPM SM activity", ", ".join(f"GPU {g} {v:.0%}" for g, v in sorted(gpm_readings.items())) or "none (no GPM)")
            for missing in missing_families(daemon, gpus, refused):
                verdicts.fail(f"missing {missing}")
            for problem in implausible(daemon):
                verdicts.fail(problem)

            cpu_share = daemon_cpu_share(process.pid, args.quiet)
            latencies = sorted(timed_scrape(url) for _ in range(args.scrapes))
            p50, p99 = latencies[len(latencies) // 2], latencies[round(0.99 * (len(latencies) - 1))]
            figure("daemon CPU", f"{cpu_share:.2%} of a core over {args.quiet:g} s at 1 Hz (CPU-only target: under 1%)")
            figure(
                "scrape latency",
                f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms over {args.scrapes} scrapes (target p99 < 10 ms)",
            )
            verdicts.expect(cpu_share < 0.05, f"the daemon took {cpu_share:.1%} of a core sampling at 1 Hz")
            verdicts.expect(p99 < 0.05, f"scrape p99 {p99 * 1000:.0f} ms")


def daemon_cpu_share(pid: int, seconds: float) -> float:
    daemon = psutil.Process(pid)
    before, started = sum(daemon.cpu_times()[:2]), time.monotonic()
    time.sleep(seconds)
    return (sum(daemon.cpu_times()[:2]) - before) / (time.monotonic() - started)


def timed_scrape(url: str) -> float:
    started = time.perf_counter()
    http_get(url)
    return time.perf_counter() - started


# --- helpers for the phases with a worker ---------------------------------------------------------


@contextlib.contextmanager
def supervised(
    args: argparse.Namespace, tmp: Path, model: str, shape: str, **settings: object
) -> Iterator[tuple[str, str, Path]]:
    """A daemon supervising one built-in worker on cuda:N, its tuner frozen; yields (metrics
    URL, worker URL, admin socket)."""
    port = free_port()
    definition: dict[str, object] = {"name": WORKER, "model": model, "device": f"cuda:{args.gpu}", "listen": f"127.0.0.1:{port}"}
    definition |= {"input_shape": shape} if shape else {}
    definition |= {"ping_timeout_seconds": 30.0, **settings}
    tuning = {"mode": "frozen", "slo_p99_ms": args.slo_ms}
    with running_supervising_daemon(tmp, "--log-level", "warning", workers=[definition], tuning=tuning) as (
        _,
        metrics,
        _w,
        admin,
    ):
        yield metrics, f"http://127.0.0.1:{port}", admin


def set_knobs(admin: Path, knobs: dict[str, int]) -> None:
    with ControlClient(admin) as client:
        client.set(knobs, WORKER)


def status(admin: Path) -> dict:
    return worker_entry(admin_status(admin), WORKER)


def settled_scrape(metrics: str) -> str:
    """/metrics once the daemon has sampled what happened so far (it samples at 1 Hz)."""
    time.sleep(2.5)
    return http_get(metrics)


def delta(before: str, after: str, name: str, **labels: str) -> float | None:
    first, last = series(before, name, **labels), series(after, name, **labels)
    return None if first is None or last is None else last - first


# --- 2. the worker on the GPU ---------------------------------------------------------------------


def worker(args: argparse.Namespace, verdicts: Verdicts) -> None:
    print(f"2. the worker on cuda:{args.gpu}", flush=True)
    gpu = str(args.gpu)
    for label, (model, shape) in MODELS.items():
        with tempfile.TemporaryDirectory() as tmp, supervised(args, Path(tmp), model, shape) as (metrics, base, admin):
            set_knobs(admin, {"streams": 2, "pool_mb": 512, "max_batch_size": 32, "max_queue_delay_us": 2000})
            plan = timed_load(base, args.window, args.clients, items=args.items)
            measure_point(timed_load(base, 3, args.clients, items=args.items), args.slo_ms / 1000)  # warm-up
            before = settled_scrape(metrics)
            throughput, goodput, p99, errors = measure_point(plan, args.slo_ms / 1000)
            after = settled_scrape(metrics)
            h2d = delta(before, after, "gputuned_worker_h2d_bytes_total", worker=WORKER) or 0.0
            rx = delta(before, after, "gputuned_pcie_rx_bytes_total", gpu=gpu)
            hits = delta(before, after, "gputuned_worker_pool_hits_total", worker=WORKER) or 0.0
            misses = delta(before, after, "gputuned_worker_pool_misses_total", worker=WORKER) or 0.0
            lanes = series(after, "gputuned_worker_lanes", worker=WORKER)
            memory = series(after, "gputuned_worker_gpu_memory_used_bytes", worker=WORKER, gpu=gpu)
            items = args.items * throughput
            figure(
                label,
                f"{throughput:.0f} requests/s ({items:.0f} items/s), goodput {goodput:.0f}/s, p99 {fmt_ms(p99)}, {errors} errors",
            )
            figure(f"{label} lanes / pool", f"{lanes} lanes running; pool hits {hits:.0f}, misses {misses:.0f}")
            figure(f"{label} worker GPU memory (NVML, per process)", "absent" if memory is None else f"{memory / 2**20:.0f} MiB")
            verdicts.expect(errors == 0, f"{label}: {errors} requests failed")
            verdicts.expect(lanes == 2, f"{label}: {lanes} lanes running, 2 set")
            verdicts.expect(hits > 0 and hits >= 0.9 * (hits + misses), f"{label}: pool hits {hits:.0f}, misses {misses:.0f}")
            verdicts.expect(memory is not None and memory > 0, f"{label}: NVML reports no GPU memory for the worker process")
            if rx is None:
                figure(f"{label} PCIe rx", "NVML's PCIe byte counters are refused by this driver: not compared")
                continue
            ratio, problem = copy_agreement(h2d, rx, args.window)
            figure(
                f"{label} host-to-device", f"worker {h2d / 1e6:.1f} MB, NVML PCIe rx {rx / 1e6:.1f} MB: rx / worker {ratio:.2f}"
            )
            verdicts.expect(problem is None, f"{label}: {problem}")


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


# --- 3. what the SMs did and the energy per request ------------------------------------------------


def signals(args: argparse.Namespace, verdicts: Verdicts) -> None:
    print(f"3. GPM and energy: ResNet-50 on cuda:{args.gpu} at rest, then under load", flush=True)
    gpu = {"gpu": str(args.gpu)}
    whole = {**gpu, "gpu_instance": ""}
    watched = {name: (name, whole) for name in GPM_SERIES}
    watched |= {
        nvml.UTILIZATION.name: (nvml.UTILIZATION.name, gpu),
        "power": (nvml.POWER.name, gpu),
        "board": (nvml.ENERGY.name, gpu),
        "worker": (nvml.WORKER_ENERGY.name, {**gpu, "worker": WORKER}),
        "nvlink": (gpm.NVLINK_THROUGHPUT.name, whole),
        "gpm_seconds": ("gputuned_collector_duration_seconds", {"collector": "gpm"}),
    }
    with tempfile.TemporaryDirectory() as tmp, supervised(args, Path(tmp), *RESNET50) as (metrics, base, admin):
        set_knobs(admin, {"streams": 2, "pool_mb": 512, "max_batch_size": 32, "max_queue_delay_us": 2000})
        poller = Poller(metrics, watched)
        poller.start()
        measure_point(timed_load(base, 3, args.clients, items=args.items), args.slo_ms / 1000)  # warm-up
        time.sleep(3)  # the last batches drain
        rest = time.monotonic()
        time.sleep(args.energy_window / 2)
        rested = time.monotonic()
        plan = timed_load(base, args.energy_window, args.clients, items=args.items)
        before = http_get(metrics)
        loaded = time.monotonic()
        throughput, _, _, errors = measure_point(plan, args.slo_ms / 1000)
        done = time.monotonic()
        time.sleep(1.5)  # the sample covering the last second
        after = http_get(metrics)
        poller.stop()
        idle = {name: poller.mean(name, rest, rested) for name in (*GPM_SERIES, nvml.UTILIZATION.name)}
        busy = {name: poller.mean(name, loaded, done) for name in (*GPM_SERIES, nvml.UTILIZATION.name)}
        for name in (*GPM_SERIES, nvml.UTILIZATION.name):
            figure(name.removeprefix("gputuned_gpu_"), f"{pct(idle[name])} at rest, {pct(busy[name])} under load")
        nvlink = poller.mean("nvlink", loaded, done)
        figure("NVLink", "-" if nvlink is None else f"{nvlink / 1e9:.2f} GB/s both directions under load")
        for problem in gpm_verdict(idle, busy):
            verdicts.fail(f"GPM: {problem}")
        gpm_seconds = poller.mean("gpm_seconds", rest, done)
        figure("gpm collector", "-" if gpm_seconds is None else f"{gpm_seconds * 1000:.2f} ms per tick (all GPUs)")

        worker_growth, board_growth = poller.growth("worker", loaded, done), poller.growth("board", loaded, done)
        if worker_growth is None or board_growth is None:
            verdicts.fail("no energy counter readings under load (the driver refuses nvmlDeviceGetTotalEnergyConsumption?)")
            return
        joules, first, last = worker_growth
        ratio, problems = energy_agreement(joules, board_growth[0], poller.readings("power", first, last))
        completed = delta(before, after, "gputuned_worker_requests_total", worker=WORKER, outcome="ok") or 0.0
        figure(
            "energy",
            f"worker {joules:.0f} J, GPU counter {board_growth[0]:.0f} J over {last - first:.0f} s: worker / power x time "
            f"{ratio:.2f}; {throughput:.0f} requests/s, {errors} errors",
        )
        per_request = joules / (throughput * (last - first)) if throughput > 0 else None
        figure(
            "energy per request", "-" if per_request is None else f"{per_request:.3f} J ({completed:.0f} completed in the window)"
        )
        for problem in problems:
            verdicts.fail(f"energy: {problem}")
        verdicts.expect(errors == 0, f"signals: {errors} requests failed")


# --- 4. tuning on the GPU -------------------------------------------------------------------------


def tuning(args: argparse.Namespace, verdicts: Verdicts) -> None:
    print("4. tuning ResNet-50 on the GPU: defaults, a sweep's best, online from the defaults", flush=True)
    slo = args.slo_ms / 1000
    with tempfile.TemporaryDirectory() as tmp, supervised(args, Path(tmp), *RESNET50) as (metrics, base, admin):
        poller = utilization_poller(metrics, args.gpu)
        poller.start()
        plan = timed_load(base, args.window, args.clients, items=args.items)
        defaults = status(admin)["knobs"]
        measure_point(timed_load(base, 3, args.clients, items=args.items), slo)  # warm-up
        started = time.monotonic()
        _, default_goodput, default_p99, _ = measure_point(plan, slo)
        default_util = poller.mean("utilization", started, time.monotonic())
        figure("defaults", f"{defaults}: goodput {default_goodput:.0f}/s, p99 {fmt_ms(default_p99)}, GPU {pct(default_util)}")

        sweep_started = time.monotonic()
        results = run_sweep(base, admin, SWEEP_GRID, slo, args.clients, None, 1.0, 3.0, 1, sys.stderr, WORKER, args.items)
        best = best_point(results, slo)
        assert best is not None
        figure(
            "sweep",
            f"{len(results)} settings in {time.monotonic() - sweep_started:.0f} s; best {best.knobs}: {best.goodput:.0f}/s",
        )

        set_knobs(admin, defaults)
        with ControlClient(admin) as client:
            client.request("tune", mode="auto", resume=True, worker=WORKER)
        online_started = time.perf_counter()
        online = asyncio.run(run_load(timed_load(base, args.online, args.clients, timeline=True, items=args.items)))
        tuned = freeze_tuner(admin, WORKER)["knobs"]
        curve = rolling(goodput_curve(online.timeline, online_started, online_started + args.online, slo), 5)
        reached = first_at_or_above(curve, 0.95 * best.goodput)
        figure(
            "online",
            f"tuned to {tuned} in {args.online:g} s; 95% of the sweep's best after {'-' if reached is None else f'{reached} s'}",
        )

        windows = side_by_side(admin, plan, [tuned, {**defaults, **best.knobs}, defaults], slo, args.rounds, args.window, WORKER)
        tuned_vs_best = statistics.median(t[0] / max(b[0], 1e-9) for t, b in zip(windows[0], windows[1]))
        tuned_vs_defaults = statistics.median(t[0] / max(d[0], 1e-9) for t, d in zip(windows[0], windows[2]))
        set_knobs(admin, tuned)
        measure_point(timed_load(base, 1, args.clients, items=args.items), slo)
        started = time.monotonic()
        measure_point(plan, slo)
        tuned_util = poller.mean("utilization", started, time.monotonic())
        poller.stop()
        figure(
            "side by side",
            f"tuned / best static {tuned_vs_best:.2f}, tuned / defaults {tuned_vs_defaults:.2f} (target >= {TARGET_GAIN})",
        )
        figure(
            "GPU utilisation",
            f"{pct(default_util)} at the defaults, {pct(tuned_util)} tuned (target >= {TARGET_UTILIZATION:.0%})",
        )
        verdicts.expect(tuned_vs_defaults >= TARGET_GAIN, f"tuned goodput only {tuned_vs_defaults:.2f}x the defaults'")
        verdicts.expect((tuned_util or 0) >= TARGET_UTILIZATION, f"GPU utilisation {pct(tuned_util)} at the tuned setting")
        verdicts.expect(tuned_vs_best >= 0.9, f"tuned only {tuned_vs_best:.2f} of the sweep's best static setting")


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


# --- 5. out of memory for real --------------------------------------------------------------------


def reserved_bytes(batch: int, device: str) -> int:
    """What ResNet-50 needs on the GPU for one batch, as torch's caching allocator reserves it."""
    import torch

    from gputuned.testing.resnet50 import build

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    model = build().eval().to(device)
    with torch.inference_mode():
        model(torch.zeros(batch, 3, 224, 224, device=device))
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_reserved(device)
    del model
    torch.cuda.empty_cache()
    return peak


def oom(args: argparse.Namespace, verdicts: Verdicts) -> None:
    import torch

    batch = args.oom_batch
    device = f"cuda:{args.gpu}"
    print(f"5. out of memory: the worker capped between what batches of {batch} and {2 * batch} need", flush=True)
    fits, overflows = reserved_bytes(batch, device), reserved_bytes(2 * batch, device)
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = round((fits + overflows) / 2 / total, 4)
    figure(
        "cap",
        f"batch {batch} reserves {fits / 2**20:.0f} MiB, {2 * batch} {overflows / 2**20:.0f} MiB; cap {fraction} of {total / 2**30:.0f} GiB",
    )
    slo = args.slo_ms / 1000
    with (
        tempfile.TemporaryDirectory() as tmp,
        supervised(args, Path(tmp), *RESNET50, gpu_memory_fraction=fraction) as (_, base, admin),
    ):
        set_knobs(admin, {"max_batch_size": batch, "max_queue_delay_us": 5000, "streams": 1})
        clients = 4 * batch // args.items  # enough waiting to fill batches of twice the size
        measure_point(timed_load(base, 3, clients, items=args.items), slo)
        pid = status(admin)["pid"]
        with ControlClient(admin) as client:
            client.request("tune", mode="auto", resume=True, worker=WORKER)
        asyncio.run(run_load(timed_load(base, args.oom_seconds, clients, items=args.items)))
        entry = freeze_tuner(admin, WORKER)
        decisions = [
            json.loads(line) for line in (Path(tmp) / "state" / "workers" / WORKER / "decisions.jsonl").read_text().splitlines()
        ]
        for decision in decisions:
            if decision["knob"] == "max_batch_size":
                figure("decision", f"{decision['action']} {decision['old']} -> {decision['new']}: {decision['reason'][-100:]}")
        ceilings = entry["tuner"]["ceilings"]
        figure("after", f"pid {pid} -> {entry['pid']}, knobs {entry['knobs']}, ceilings {ceilings}, restarts {entry['restarts']}")
        verdicts.expect((problem := oom_verdict(decisions, ceilings, batch)) is None, f"out of memory: {problem}")
        verdicts.expect(entry["pid"] == pid, f"the worker was replaced (pid {pid} -> {entry['pid']})")
        _, goodput, _, errors = measure_point(timed_load(base, 3, clients, items=args.items), slo)
        figure("serving after", f"goodput {goodput:.0f}/s, {errors} errors")
        verdicts.expect(errors == 0 and goodput > 0, f"after the out-of-memory trial: {errors} errors, goodput {goodput:.0f}/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    parser.add_argument("--gpu", type=int, default=0, help="the CUDA/NVML index of the GPU to serve on")
    parser.add_argument("--smi", type=shlex.split, default=["nvidia-smi"], help="the nvidia-smi command")
    parser.add_argument("--nvml-module", help="an NVML binding in place of pynvml (the fake, on hosts without a GPU)")
    parser.add_argument("--reads", type=int, default=5, help="simultaneous reads of the daemon and nvidia-smi")
    parser.add_argument("--quiet", type=float, default=20.0, help="seconds of the daemon's CPU measurement")
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--clients", type=int, default=64, help="closed-loop clients")
    parser.add_argument("--items", type=int, default=4, help="items per request")
    parser.add_argument("--slo-ms", type=float, default=100.0)
    parser.add_argument("--window", type=float, default=5.0, help="seconds per measured window")
    parser.add_argument("--energy-window", type=float, default=30.0, help="seconds at rest, and under load, of phase 3")
    parser.add_argument("--online", type=float, default=90.0, help="seconds of online tuning")
    parser.add_argument("--rounds", type=int, default=3, help="side-by-side rounds")
    parser.add_argument("--oom-batch", type=int, default=64, help="the batch that fits under the cap (twice it does not)")
    parser.add_argument("--oom-seconds", type=float, default=40.0, help="seconds of tuning under the cap")
    args = parser.parse_args()
    phases = [phase.strip() for phase in args.phases.split(",") if phase.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        parser.error(f"unknown phase {unknown[0]!r}; phases: {', '.join(PHASES)}")
    if set(phases) - {"monitor"}:
        import torch

        if not torch.cuda.is_available() or args.gpu >= torch.cuda.device_count():
            print(
                f"gpu check: phases {', '.join(p for p in phases if p != 'monitor')} need CUDA device {args.gpu}; none here",
                file=sys.stderr,
            )
            return 2
    verdicts = Verdicts()
    for phase in phases:
        {"monitor": monitor, "worker": worker, "signals": signals, "tuning": tuning, "oom": oom}[phase](args, verdicts)
    print(f"\n{len(verdicts.failures)} checks failed" if verdicts.failures else "\nevery check passed")
    return 1 if verdicts.failures else 0


if __name__ == "__main__":
    sys.exit(main())
