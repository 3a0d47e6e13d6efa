"""`gputuned sweep`: the offline brute-force baseline (Triton Model Analyzer's brute mode).

Every point of a grid of knob values is set on a worker over its control socket, warmed
up, then measured in `repeats` windows under the same load; a point's figures are the
medians of its windows. Goodput counts the requests that completed within the SLO, as
the client saw them. Writes a CSV and a PNG (throughput against p99, one point per
setting, the SLO line, the best point marked) and returns the best setting.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from gputuned.control.client import SLOW_SET_SECONDS, ControlClient, ControlError
from gputuned.loadgen import LoadPlan, run_load


class SweepError(ValueError):
    """A grid or a load that cannot be swept; the message says which."""


@dataclass(frozen=True)
class SweepPoint:
    knobs: dict[str, int]
    throughput: float
    goodput: float
    p99: float | None
    errors: int


def parse_grid(words: list[str]) -> dict[str, list[int]]:
    """['max_batch_size=1,2,4', 'streams=1,2'] -> {'max_batch_size': [1, 2, 4], 'streams': [1, 2]}."""
    grid: dict[str, list[int]] = {}
    for word in words:
        name, sep, values = word.partition("=")
        try:
            grid[name] = [int(v) for v in values.split(",")] if sep and name else []
        except ValueError:
            raise SweepError(f"{word!r}: values must be comma-separated integers") from None
        if not grid[name]:
            raise SweepError(f"{word!r} is not KNOB=V1,V2,...")
    if not grid:
        raise SweepError("give at least one KNOB=V1,V2,...")
    return grid


def points(grid: dict[str, list[int]]) -> list[dict[str, int]]:
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[name] for name in names))]


def measure_point(plan: LoadPlan, slo_seconds: float) -> tuple[float, float, float | None, int]:
    """(throughput, goodput, p99, errors) of one window of load."""
    result = asyncio.run(run_load(plan))
    within = sum(1 for latency in result.latencies if latency <= slo_seconds)
    elapsed = result.elapsed or 1.0
    return result.ok / elapsed, within / elapsed, result.percentile(99), sum(result.errors.values())


def run_sweep(
    url: str,
    control_socket: Path,
    grid: dict[str, list[int]],
    slo_seconds: float,
    concurrency: int | None,
    rate: float | None,
    warmup: float,
    window: float,
    repeats: int,
    progress: TextIO | None = None,
    worker: str | None = None,
    items: int = 1,
) -> list[SweepPoint]:
    """Every point of `grid`, set through `control_socket` (a worker's, or the daemon's admin
    socket with `worker` naming one of its workers) and measured under load at `url`, each
    request carrying `items` inputs."""
    results = []
    settings = points(grid)
    started = time.monotonic()

    def plan(seconds: float) -> LoadPlan:
        return LoadPlan(url=url, concurrency=concurrency, rate=rate, requests=10**9, duration=seconds, batch=items)

    with ControlClient(control_socket) as client:
        for index, knobs in enumerate(settings, 1):
            client.set(knobs, worker, timeout=SLOW_SET_SECONDS)
            if warmup > 0:
                measure_point(plan(warmup), slo_seconds)
            windows = [measure_point(plan(window), slo_seconds) for _ in range(repeats)]
            p99s = [w[2] for w in windows if w[2] is not None]
            point = SweepPoint(
                knobs=knobs,
                throughput=statistics.median(w[0] for w in windows),
                goodput=statistics.median(w[1] for w in windows),
                p99=statistics.median(p99s) if p99s else None,
                errors=sum(w[3] for w in windows),
            )
            results.append(point)
            if progress is not None:
                elapsed = time.monotonic() - started
                bar = "#" * (20 * index // len(settings))
                setting = " ".join(f"{k}={v}" for k, v in knobs.items())
                progress.write(
                    f"\r[{bar:<20}] {index}/{len(settings)} {elapsed:5.0f}s  {setting}: {point.goodput:.0f}/s within SLO "
                )
                progress.flush()
    if progress is not None:
        progress.write("\n")
    return results


def best_point(results: list[SweepPoint], slo_seconds: float) -> SweepPoint | None:
    """The highest goodput among the points whose p99 meets the SLO (else the highest goodput)."""
    within = [p for p in results if p.p99 is not None and p.p99 <= slo_seconds]
    candidates = within or results
    return max(candidates, key=lambda p: p.goodput) if candidates else None


def write_csv(results: list[SweepPoint], path: Path) -> None:
    names = list(results[0].knobs) if results else []
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, "throughput_per_second", "goodput_per_second", "p99_seconds", "errors"])
        for point in results:
            writer.writerow(
                [
                    *(point.knobs[n] for n in names),
                    f"{point.throughput:.3f}",
                    f"{point.goodput:.3f}",
                    "" if point.p99 is None else f"{point.p99:.6f}",
                    point.errors,
                ]
            )


def plot(results: list[SweepPoint], slo_seconds: float, best: SweepPoint | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    measured = [(p, p.p99) for p in results if p.p99 is not None]
    axes.scatter(
        [p99 * 1000 for _, p99 in measured], [p.throughput for p, _ in measured], s=18, color="tab:blue", label="setting"
    )
    for p, p99 in measured:
        axes.annotate(" ".join(str(v) for v in p.knobs.values()), (p99 * 1000, p.throughput), fontsize=6, alpha=0.6)
    axes.axvline(slo_seconds * 1000, color="tab:red", linestyle="--", label=f"SLO p99 {slo_seconds * 1000:g} ms")
    if best is not None and best.p99 is not None:
        axes.scatter(
            [best.p99 * 1000],
            [best.throughput],
            s=160,
            marker="*",
            color="tab:orange",
            zorder=3,
            label="best: " + ", ".join(f"{k}={v}" for k, v in best.knobs.items()),
        )
    axes.set_xlabel("p99 latency (ms)")
    axes.set_ylabel("throughput (requests/s)")
    axes.set_title(f"gputuned sweep: {len(results)} settings (labels: {', '.join(results[0].knobs) if results else ''})")
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(args: argparse.Namespace) -> int:
    """Runs `gputuned sweep` from parsed arguments."""
    try:
        grid = parse_grid(args.grid)
        if args.batch < 1:
            raise SweepError(f"--batch {args.batch}: a request carries at least one item")
    except SweepError as exc:
        print(f"gputuned sweep: {exc}", file=sys.stderr)
        return 2
    slo = args.slo_ms / 1000
    try:
        results = run_sweep(
            args.url,
            args.socket,
            grid,
            slo,
            None if args.rate else args.concurrency,
            args.rate,
            args.warmup,
            args.window,
            args.repeats,
            sys.stderr,
            args.worker,
            args.batch,
        )
    except ControlError as exc:
        print(f"gputuned sweep: {exc}", file=sys.stderr)
        return 1
    best = best_point(results, slo)
    write_csv(results, args.csv)
    plot(results, slo, best, args.png)
    print(f"wrote {args.csv} and {args.png}")
    if best is not None:
        print(
            "best: "
            + " ".join(f"{k}={v}" for k, v in best.knobs.items())
            + f"  goodput {best.goodput:.1f}/s, throughput {best.throughput:.1f}/s, p99 "
            + ("-" if best.p99 is None else f"{best.p99 * 1000:.1f} ms")
        )
    return 0
