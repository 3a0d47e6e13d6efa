"""Daemon overhead: CPU per wall second, peak RSS and /metrics scrape latency.

Runs two real `gputuned run --no-worker` processes side by side, one with the gpm
collector and one without, each sampling at 1 Hz with eight fake GPUs
(gputuned/testing/fake_nvml.py:hgx8, an HGX board's worth of series, GPM included) plus
the host and NUMA collectors on this machine's live /proc and /sys, and a real child
process as the worker. Phase 1 measures both daemons' CPU time over the same quiet window
with no scrapes; phase 2 times sequential scrapes from a client on loopback, alternating
between them.

Targets: under 1% of one core with GPM on, under 80 MB peak RSS, scrape p99 under 10 ms.

    python bench/daemon_overhead.py [--seconds 30] [--scrapes 500]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from gputuned.testing.processes import running_daemon


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the process's high-water mark of resident memory."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/PID/status")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class Measured:
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    rss_bytes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    body: bytes = b""

    @property
    def cpu_share(self) -> float:
        return self.cpu_seconds / self.wall_seconds


def scrape(url: str, into: Measured) -> None:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        into.body = response.read()
    into.latencies_ms.append((time.perf_counter() - started) * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="quiet window for the CPU measurement")
    parser.add_argument("--scrapes", type=int, default=500, help="sequential scrapes for the latency figures, per daemon")
    args = parser.parse_args()

    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    measured = {"gpm on": Measured(), "gpm off": Measured()}
    try:
        env = {"GPUTUNED_FAKE_WORKER_PID": str(worker.pid)}
        common = ("--nvml-module", "gputuned.testing.fake_nvml:hgx8", "--worker-pid", str(worker.pid), "--log-level", "warning")
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            without_gpm = Path(tmp) / "gputuned.toml"
            without_gpm.write_text("[collectors]\ngpm = false\n")
            daemons = {
                "gpm on": stack.enter_context(running_daemon(*common, env=env)),
                "gpm off": stack.enter_context(running_daemon(*common, "--config", str(without_gpm), env=env)),
            }
            time.sleep(3)  # past start-up: imports and the first rounds
            processes = {label: psutil.Process(process.pid) for label, (process, _) in daemons.items()}
            before = {label: sum(process.cpu_times()[:2]) for label, process in processes.items()}
            wall_before = time.monotonic()
            time.sleep(args.seconds)
            wall = time.monotonic() - wall_before
            for label, process in processes.items():
                measured[label].cpu_seconds = sum(process.cpu_times()[:2]) - before[label]
                measured[label].wall_seconds = wall
            for _ in range(args.scrapes):  # interleaved, so drift hits both alike
                for label, (_, url) in daemons.items():
                    scrape(url, measured[label])
            for label, (process, _) in daemons.items():
                measured[label].rss_bytes = peak_rss_bytes(process.pid)
    finally:
        worker.kill()
        worker.wait()

    on, off = measured["gpm on"], measured["gpm off"]
    series = sum(1 for line in on.body.decode().splitlines() if line and not line.startswith("#"))
    print(
        f"two daemons side by side: 8 fake GPUs + numa + host at 1 Hz, {series} series per scrape with GPM ({len(on.body)} bytes)"
    )
    for label, m in measured.items():
        p50, p99 = statistics.median(m.latencies_ms), percentile(m.latencies_ms, 99)
        print(
            f"{label}: cpu {m.cpu_seconds:.3f} s over {m.wall_seconds:.1f} s = {m.cpu_share * 100:.3f}% of one core, "
            f"peak rss {m.rss_bytes / 1e6:.1f} MB, scrape p50 {p50:.2f} ms, p99 {p99:.2f} ms over {len(m.latencies_ms)}"
        )
    verdict = "OK" if on.cpu_share < 0.01 else "MISSED"
    print(
        f"cpu:    with GPM {on.cpu_share * 100:.3f}% of one core (target < 1%) {verdict}; "
        f"GPM adds {(on.cpu_share - off.cpu_share) * 100:+.3f} points ({on.cpu_share / off.cpu_share:.2f}x)"
    )
    print(f"rss:    peak {on.rss_bytes / 1e6:.1f} MB with GPM (target < 80 MB) {'OK' if on.rss_bytes < 80e6 else 'MISSED'}")
    p99 = percentile(on.latencies_ms, 99)
    print(f"scrape: p99 {p99:.2f} ms with GPM (target < 10 ms) {'OK' if p99 < 10 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
