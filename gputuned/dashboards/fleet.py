"""The Fleet dashboard: every gputuned instance one Prometheus scrapes, a row each."""

from __future__ import annotations

from gputuned.dashboards.panels import GPU, INSTANCE, RATE, Board, fleet_table, graph
from gputuned.dashboards.tuning import KNOBS

UID = "gputuned-fleet"

P99 = f"histogram_quantile(0.99, sum by (instance, le) (rate(gputuned_worker_latency_seconds_bucket{{{INSTANCE}}}[{RATE}])))"


def build() -> Board:
    board = Board(
        UID,
        "gputuned / Fleet",
        "Every gputuned instance scraped by this Prometheus: GPU utilisation, "
        "goodput, p99 against the SLO, the knobs in force and the worker's health.",
    )
    columns = [
        (f"avg by (instance) (gputuned_gpu_utilization_ratio{{{GPU}}})", "GPU utilisation", "percentunit"),
        (f"sum by (instance) (gputuned_tuner_goodput_requests_per_second{{{INSTANCE}}})", "Goodput", "reqps"),
        (P99, "p99 latency", "s"),
        (f"max by (instance) (gputuned_tuner_slo_p99_seconds{{{INSTANCE}}})", "p99 SLO", "s"),
        (f"max by (instance) (gputuned_worker_up{{{INSTANCE}}})", "Worker up", "bool_yes_no"),
        (f"sum by (instance) (increase(gputuned_worker_restarts_total{{{INSTANCE}}}[1h]))", "Restarts (1 h)", "short"),
    ]
    columns += [
        (f'max by (instance) (gputuned_knob_value{{{INSTANCE}, knob="{knob}"}})', title, unit) for knob, title, unit, _ in KNOBS
    ]
    board.row("Instances").add(
        fleet_table(
            "Instances",
            "One row per gputuned instance: what its GPUs and worker do now and the knobs the "
            "tuner keeps. p99 above its SLO means the instance is overloaded or still tuning.",
            columns,
        )
    )
    board.row("Over time").add(
        graph(
            "GPU utilisation by instance",
            "Mean utilisation of the selected GPUs of each instance.",
            "percentunit",
            [(f"avg by (instance) (gputuned_gpu_utilization_ratio{{{GPU}}})", "{{instance}}")],
            width=12,
            maximum=1,
        ),
        graph(
            "Goodput by instance",
            "Requests completed within the SLO per second on each instance.",
            "reqps",
            [(f"sum by (instance) (gputuned_tuner_goodput_requests_per_second{{{INSTANCE}}})", "{{instance}}")],
            width=12,
        ),
        graph(
            "p99 over its SLO, by instance",
            "Each instance's p99 latency divided by its SLO: above 1 the SLO is broken.",
            "percentunit",
            [(f"{P99} / on (instance) max by (instance) (gputuned_tuner_slo_p99_seconds{{{INSTANCE}}})", "{{instance}}")],
            width=12,
        ),
        graph(
            "Workers up",
            "1 while each instance's worker runs and is ready.",
            "short",
            [(f"max by (instance) (gputuned_worker_up{{{INSTANCE}}})", "{{instance}}")],
            width=12,
            maximum=1,
        ),
    )
    return board
