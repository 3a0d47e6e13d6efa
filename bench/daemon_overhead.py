"""Daemon overhead: CPU per wall second, peak RSS and /metrics scrape latency.

Runs the real `gputuned run --no-worker` process sampling at 1 Hz with eight fake GPUs
(gputuned/testing/fake_nvml.py:hgx8, an HGX board's worth of series) plus the host and NUMA
collectors on this machine's live /proc and /sys, and a real child process as the
worker. Phase 1 measures the daemon's CPU time over a quiet window with no scrapes;
phase 2 times sequential scrapes from a client on loopback.

Targets (issue 2): under 1% of one core, under 80 MB peak RSS, scrape p99 under 10 ms.

    python bench/daemon_overhead.py [--seconds 30] [--scrapes 500]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import urllib.request
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="quiet window for the CPU measurement")
    parser.add_argument("--scrapes", type=int, default=500, help="sequential scrapes for the latency figures")
    args = parser.parse_args()

    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        env = {"GPUTUNED_FAKE_WORKER_PID": str(worker.pid)}
        daemon_args = (
            "--nvml-module",
            "gputuned.testing.fake_nvml:hgx8",
            "--worker-pid",
            str(worker.pid),
            "--log-level",
            "warning",
        )
        with running_daemon(*daemon_args, env=env) as (process, url):
            daemon = psutil.Process(process.pid)
            time.sleep(3)  # past start-up: imports and the first rounds
            cpu_before = sum(daemon.cpu_times()[:2])
            wall_before = time.monotonic()
            time.sleep(args.seconds)
            cpu = sum(daemon.cpu_times()[:2]) - cpu_before
            wall = time.monotonic() - wall_before

            body = b""
            latencies_ms = []
            for _ in range(args.scrapes):
                started = time.perf_counter()
                with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
                    body = response.read()
                latencies_ms.append((time.perf_counter() - started) * 1000)
            rss = peak_rss_bytes(process.pid)
    finally:
        worker.kill()
        worker.wait()

    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    cpu_share = cpu / wall
    p50, p99 = statistics.median(latencies_ms), percentile(latencies_ms, 99)
    print(f"daemon: 8 fake GPUs + numa + host at 1 Hz, {series} series per scrape ({len(body)} bytes)")
    print(
        f"cpu:    {cpu:.3f} s over {wall:.1f} s = {cpu_share * 100:.3f}% of one core   (target < 1%)   {'OK' if cpu_share < 0.01 else 'MISSED'}"
    )
    print(f"rss:    peak {rss / 1e6:.1f} MB                              (target < 80 MB) {'OK' if rss < 80e6 else 'MISSED'}")
    print(
        f"scrape: p50 {p50:.2f} ms, p99 {p99:.2f} ms over {len(latencies_ms)} scrapes (target p99 < 10 ms) {'OK' if p99 < 10 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
