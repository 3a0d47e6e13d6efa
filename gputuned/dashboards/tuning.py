"""The Tuning dashboard: what the worker serves, what the tuner changed and what it cost."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard as sdk
from grafana_foundation_sdk.builders import heatmap
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from gputuned.dashboards.panels import DATASOURCE, RATE, WORKER, WORKER_GPU, Board, dashed_red, graph, query
from gputuned.knobs import CATALOGUE

UID = "gputuned-tuning"

# A panel for each knob the online loop may move; restart-only knobs never change under it.
KNOBS = tuple(knob for knob in CATALOGUE.values() if knob.live)

LATENCY_BUCKETS = f"gputuned_worker_latency_seconds_bucket{{{WORKER}}}"


def decisions_annotation() -> sdk.AnnotationQuery:
    """A marker on every time panel where the tuner applied, kept or reverted a change."""
    return (
        sdk.AnnotationQuery()
        .name("Tuner decisions")
        .datasource(DATASOURCE)
        .enable(True)
        .icon_color("orange")
        .expr(f"sum by (worker, knob, action) (increase(gputuned_tuner_decisions_total{{{WORKER}}}[$__interval])) > 0")
        .title_format("{{worker}}: {{action}} {{knob}}")
        .tag_keys("worker,knob,action")
        .step("$__interval")
        .use_value_for_time(False)
    )


def batch_size_heatmap() -> heatmap.Panel:
    expr = f"sum by (le) (increase(gputuned_worker_batch_size_bucket{{{WORKER}}}[{RATE}]))"
    return (
        heatmap.Panel()
        .title("Batch size distribution")
        .description("How many requests each batch carried, per interval: the batcher's work at the current knobs.")
        .datasource(DATASOURCE)
        .span(12)
        .height(8)
        .calculate(False)
        .with_target(query(expr, "{{le}}", "A").format(PromQueryFormat.HEATMAP))
    )


def _against_objective(title: str, histogram: str, objective: str, what: str) -> Any:
    buckets = f"{histogram}_bucket{{{WORKER}}}"
    return graph(
        title,
        f"{what} at the 50th and 99th percentiles, with the objective goodput counts against.",
        "s",
        [
            (f"histogram_quantile(0.5, sum by (instance, worker, le) (rate({buckets}[{RATE}])))", "{{worker}} p50"),
            (f"histogram_quantile(0.99, sum by (instance, worker, le) (rate({buckets}[{RATE}])))", "{{worker}} p99"),
            (f"{objective}{{{WORKER}}}", "{{worker}} objective"),
        ],
        width=12,
    ).with_override(*dashed_red(".* objective"))


def llm_panels() -> list[Any]:
    """An LLM worker's tokens, TTFT and TPOT against their objectives, its scheduler and KV cache."""
    return [
        _against_objective(
            "Time to first token",
            "gputuned_worker_time_to_first_token_seconds",
            "gputuned_tuner_slo_ttft_seconds",
            "Each request's time to its first token (queueing for admission and the prompt's prefill)",
        ),
        _against_objective(
            "Time per output token",
            "gputuned_worker_time_per_output_token_seconds",
            "gputuned_tuner_slo_tpot_seconds",
            "Each request's time per output token after the first (how fast it streams)",
        ),
        graph(
            "Tokens",
            "Tokens generated and prompt tokens processed per second.",
            "short",
            [
                (f"rate(gputuned_worker_generation_tokens_total{{{WORKER}}}[{RATE}])", "{{worker}} generated/s"),
                (f"rate(gputuned_worker_prompt_tokens_total{{{WORKER}}}[{RATE}])", "{{worker}} prompt/s"),
            ],
        ),
        graph(
            "Sequences",
            "Sequences running (the admission cap bounds them) and requests waiting to be admitted, and sequences "
            "preempted per second (the KV cache ran out; their tokens are computed again).",
            "short",
            [
                (f"gputuned_worker_running_sequences{{{WORKER}}}", "{{worker}} running"),
                (f"gputuned_worker_queue_depth{{{WORKER}}}", "{{worker}} waiting"),
                (f"rate(gputuned_worker_preemptions_total{{{WORKER}}}[{RATE}])", "{{worker}} preempted/s"),
            ],
        ),
        graph(
            "KV cache",
            "Share of the KV cache in use; near 100% new sequences wait or running ones are preempted.",
            "percentunit",
            [(f"gputuned_worker_kv_cache_usage_ratio{{{WORKER}}}", "{{worker}} in use")],
            maximum=1,
        ),
    ]


def energy_panels() -> list[Any]:
    """The GPU energy each worker is charged with, per request and per generated token."""
    energy = f"rate(gputuned_worker_energy_joules_total{{{WORKER_GPU}}}[{RATE}])"
    completed = f'rate(gputuned_worker_requests_total{{{WORKER}, outcome="ok"}}[{RATE}])'
    generated = f"rate(gputuned_worker_generation_tokens_total{{{WORKER}}}[{RATE}])"
    return [
        graph(
            "Power attributed",
            "The share of its GPU's power each worker is charged with (its processes' share of the GPU's "
            "utilisation). [tuning] objective = goodput_per_watt makes the tuner raise goodput per watt of it.",
            "watt",
            [(energy, "{{worker}} GPU {{gpu}}")],
        ),
        graph(
            "Energy per request",
            "GPU energy per completed request over the interval.",
            "joule",
            [(f"sum by (worker) ({energy}) / sum by (worker) ({completed})", "{{worker}}")],
        ),
        graph(
            "Energy per generated token",
            "An LLM worker's GPU energy per generated token over the interval.",
            "joule",
            [(f"sum by (worker) ({energy}) / sum by (worker) ({generated})", "{{worker}}")],
        ),
    ]


def variable_length_panels() -> list[Any]:
    """A variable-length model's tokens, and the share of the computed ones that were padding."""
    tokens = f"rate(gputuned_worker_tokens_total{{{WORKER}}}[{RATE}])"
    padding = f"rate(gputuned_worker_padding_tokens_total{{{WORKER}}}[{RATE}])"
    return [
        graph(
            "Tokens computed",
            "The requests' own tokens computed per second, and the padding computed with them "
            "(a batch is padded to its longest request).",
            "short",
            [(tokens, "{{worker}} tokens/s"), (padding, "{{worker}} padding/s")],
            width=12,
        ),
        graph(
            "Padding share",
            "Padding over all the tokens computed: what the length buckets (their width is a knob) save.",
            "percentunit",
            [(f"{padding} / ({tokens} + {padding})", "{{worker}} padding")],
            width=12,
            maximum=1,
        ),
    ]


def build() -> Board:
    board = Board(
        UID,
        "gputuned / Tuning",
        "The worker gputuned supervises: goodput and latency against the SLO, "
        "each knob over time with the tuner's decisions marked, and what the changes cost.",
    )
    board.annotate(decisions_annotation())
    board.row("Serving").add(
        graph(
            "Goodput and throughput",
            "Requests completed within the p99 SLO per second (goodput, what the tuner "
            "maximises), all completed requests per second, and those the server failed (its own fault).",
            "reqps",
            [
                (f"gputuned_tuner_goodput_requests_per_second{{{WORKER}}}", "{{worker}} goodput"),
                (
                    f'sum by (instance, worker) (rate(gputuned_worker_requests_total{{{WORKER}, outcome="ok"}}[{RATE}]))',
                    "{{worker}} throughput",
                ),
                (
                    f'sum by (instance, worker) (rate(gputuned_worker_requests_total{{{WORKER}, outcome="failed"}}[{RATE}]))',
                    "{{worker}} failed",
                ),
            ],
            width=12,
        ),
        graph(
            "Latency against the SLO",
            "Worker latency (queue and compute) at the 50th and 99th percentiles, with the SLO the tuner holds p99 under.",
            "s",
            [
                (f"histogram_quantile(0.5, sum by (instance, worker, le) (rate({LATENCY_BUCKETS}[{RATE}])))", "{{worker}} p50"),
                (f"histogram_quantile(0.99, sum by (instance, worker, le) (rate({LATENCY_BUCKETS}[{RATE}])))", "{{worker}} p99"),
                (f"gputuned_tuner_slo_p99_seconds{{{WORKER}}}", "{{worker}} SLO"),
            ],
            width=12,
        ).with_override(*dashed_red(".* SLO")),
        graph(
            "Queue depth",
            "Requests waiting for a batch.",
            "short",
            [(f"gputuned_worker_queue_depth{{{WORKER}}}", "{{worker}} queued")],
            width=12,
        ),
        batch_size_heatmap(),
        graph(
            "Lane utilisation",
            "Share of time the execution lanes spent running batches; near 100% the streams tuner adds a lane.",
            "percentunit",
            [
                (
                    (f"rate(gputuned_worker_lane_busy_seconds_total{{{WORKER}}}[{RATE}]) / gputuned_worker_lanes{{{WORKER}}}"),
                    "busy",
                )
            ],
            width=12,
            maximum=1,
        ),
        graph(
            "Requests by outcome",
            "Requests per second by outcome: ok; rejected, the client's mistake (malformed, unknown model, wrong shape, "
            "oversize); refused, not taken now (full queue, not ready, draining); failed, the server's fault (a batch "
            "error such as out of memory).",
            "reqps",
            [(f"sum by (worker, outcome) (rate(gputuned_worker_requests_total{{{WORKER}}}[{RATE}]))", "{{worker}} {{outcome}}")],
            width=12,
        ),
    )
    board.row("Knobs (orange markers: the tuner's decisions)")
    for knob in KNOBS:
        board.add(
            graph(
                knob.title,
                f"{knob.description} Markers show the tuner's decisions.",
                knob.grafana_unit,
                [(f'gputuned_knob_value{{{WORKER}, knob="{knob.name}"}}', "{{worker}} " + knob.name)],
                width=8,
                height=7,
            )
        )
    board.row("Decisions").add(
        graph(
            "Tuner decisions",
            "Changes the tuner applied, kept, reverted or refused, per interval, by knob.",
            "short",
            [
                (
                    f"sum by (worker, knob, action) (increase(gputuned_tuner_decisions_total{{{WORKER}}}[{RATE}]))",
                    "{{worker}} {{action}} {{knob}}",
                )
            ],
            width=12,
            height=7,
        ),
        graph(
            "Tuner state",
            "1 while a change is on trial; the mode in force (auto, recommend or frozen); knobs "
            "frozen by hand until `gputuned tune --resume`.",
            "short",
            [
                (f"gputuned_tuner_trial_active{{{WORKER}}}", "{{worker}} trial active"),
                (f"gputuned_tuner_mode{{{WORKER}}} == 1", "{{worker}} mode {{mode}}"),
                (
                    (
                        f"count by (instance, worker) (gputuned_tuner_knob_frozen{{{WORKER}}}) or "
                        f"0 * group by (instance, worker) (gputuned_tuner_trial_active{{{WORKER}}})"
                    ),
                    "frozen knobs",
                ),
            ],
            width=12,
            height=7,
        ),
    )
    board.row("LLM serving (vLLM workers)").add(*llm_panels())
    board.row("Variable-length models (the built-in worker)").add(*variable_length_panels())
    board.row("Energy (workers on a GPU)").add(*energy_panels())
    board.row("Memory and health").add(
        graph(
            "Pool hits and misses",
            "Batches assembled in a pooled buffer (hit) or needing a fresh allocation "
            "(miss) per second; misses mean the pool is smaller than the batches.",
            "short",
            [
                (f"rate(gputuned_worker_pool_hits_total{{{WORKER}}}[{RATE}])", "{{worker}} hits"),
                (f"rate(gputuned_worker_pool_misses_total{{{WORKER}}}[{RATE}])", "{{worker}} misses"),
            ],
        ),
        graph(
            "Out-of-memory events",
            "Batches that failed for lack of memory per interval; the batch tuner halves "
            "the batch size and remembers the ceiling.",
            "short",
            [(f"increase(gputuned_worker_oom_events_total{{{WORKER}}}[{RATE}])", "{{worker}} OOM")],
        ),
        graph(
            "Worker restarts and health",
            "Worker exits (each restarted with backoff), whether it is up and "
            "ready, and whether restarts stopped after a crash loop.",
            "short",
            [
                (f"increase(gputuned_worker_restarts_total{{{WORKER}}}[{RATE}])", "{{worker}} restarts"),
                (f"gputuned_worker_up{{{WORKER}}}", "{{worker}} up"),
                (f"gputuned_worker_crash_loop{{{WORKER}}}", "{{worker}} crash loop"),
            ],
        ),
        graph(
            "Worker memory",
            "Resident host memory of the worker, and device memory it holds on its GPU (needs a GPU).",
            "bytes",
            [
                (f"gputuned_worker_resident_memory_bytes{{{WORKER}}}", "{{worker}} host resident"),
                (f"gputuned_worker_gpu_memory_used_bytes{{{WORKER_GPU}}}", "{{worker}} GPU {{gpu}}"),
            ],
            width=12,
        ),
        graph(
            "Host-to-device copies",
            "Input bytes the worker copied to its GPU per second (zero on a CPU worker).",
            "Bps",
            [(f"rate(gputuned_worker_h2d_bytes_total{{{WORKER}}}[{RATE}])", "{{worker}} host to device")],
            width=12,
        ),
    )
    return board
