"""The Fleet dashboard: every gputuned instance one Prometheus scrapes, a row per instance and worker."""

from __future__ import annotations

from gputuned.dashboards.panels import GPU, RATE, WORKER, Board, fleet_table, graph
from gputuned.dashboards.tuning import KNOBS

UID = "gputuned-fleet"

P99 = (
    f"histogram_quantile(0.99, sum by (instance, worker, le) (rate(gputuned_worker_latency_seconds_bucket{{{WORKER}}}[{RATE}])))"
)
# Each worker's GPU utilisation: gputuned_worker_info joins a worker to its GPU (none on the CPU).
WORKER_GPU_UTILIZATION = (
    f"avg by (instance, worker) (max by (instance, worker, gpu) (gputuned_worker_info{{{WORKER}}}) "
    f"* on (instance, gpu) group_left () gputuned_gpu_utilization_ratio{{{GPU}}})"
)


def build() -> Board:
    board = Board(
        UID,
        "gputuned / Fleet",
        "Every gputuned instance scraped by this Prometheus, a row per worker: its GPU's utilisation, "
        "goodput, p99 against the SLO, the knobs in force and the worker's health.",
    )
    columns = [
        (WORKER_GPU_UTILIZATION, "GPU utilisation", "percentunit"),
        (f"sum by (instance, worker) (gputuned_tuner_goodput_requests_per_second{{{WORKER}}})", "Goodput", "reqps"),
        (P99, "p99 latency", "s"),
        (f"max by (instance, worker) (gputuned_tuner_slo_p99_seconds{{{WORKER}}})", "p99 SLO", "s"),
        (f"max by (instance, worker) (gputuned_worker_up{{{WORKER}}})", "Worker up", "bool_yes_no"),
        (f"sum by (instance, worker) (increase(gputuned_worker_restarts_total{{{WORKER}}}[1h]))", "Restarts (1 h)", "short"),
    ]
    columns += [
        (f'max by (instance, worker) (gputuned_knob_value{{{WORKER}, knob="{knob.name}"}})', knob.title, knob.grafana_unit)
        for knob in KNOBS
    ]
    board.row("Workers").add(
        fleet_table(
            "Workers",
            "One row per worker of every gputuned instance: what its GPU and the worker do now and the "
            "knobs the tuner keeps. p99 above its SLO means the worker is overloaded or still tuning.",
            columns,
        )
    )
    board.row("Over time").add(
        graph(
            "GPU utilisation by worker",
            "Mean utilisation of each worker's GPU (CPU workers have none).",
            "percentunit",
            [(WORKER_GPU_UTILIZATION, "{{instance}} {{worker}}")],
            width=12,
            maximum=1,
        ),
        graph(
            "Goodput by worker",
            "Requests completed within the SLO per second by each worker.",
            "reqps",
            [(f"sum by (instance, worker) (gputuned_tuner_goodput_requests_per_second{{{WORKER}}})", "{{instance}} {{worker}}")],
            width=12,
        ),
        graph(
            "p99 over its SLO, by worker",
            "Each worker's p99 latency divided by its SLO: above 1 the SLO is broken.",
            "percentunit",
            [
                (
                    f"{P99} / on (instance, worker) max by (instance, worker) (gputuned_tuner_slo_p99_seconds{{{WORKER}}})",
                    "{{instance}} {{worker}}",
                )
            ],
            width=12,
        ),
        graph(
            "Workers up",
            "1 while each worker runs and is ready.",
            "short",
            [(f"max by (instance, worker) (gputuned_worker_up{{{WORKER}}})", "{{instance}} {{worker}}")],
            width=12,
            maximum=1,
        ),
    )
    return board
