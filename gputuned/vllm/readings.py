"""vLLM's /metrics -> the cumulative stats a worker reports (pure).

Every figure comes from vLLM's own Prometheus endpoint, summed over its engines:

- outcomes: `vllm:request_success_total` by `finished_reason` (stop, length and repetition
  are `completed`; error is `failed`, the server's fault; abort is `aborted`, a client that
  cancelled or went away, no one's fault), `vllm:admission_rejections_total` (turned away
  at admission: `refused`) and the HTTP 4xx answers of the generation endpoints
  (`http_requests_total`: the clients' mistakes, `rejected`);
- load: `vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`
  (a 0-1 share, despite its name), `vllm:num_preemptions_total`;
- tokens: `vllm:prompt_tokens_total`, `vllm:generation_tokens_total`;
- latency histograms, in vLLM's own buckets: time to first token, inter-token latency,
  time per output token of each request, end to end (the worker's `latency_seconds`) and
  time queued.

vLLM's counters start again from zero when vLLM restarts (an attached server restarted by
its owner); `performance.Counters` turns them into totals that never fall.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

from gputuned.control.messages import HistogramField, HistogramReport, StatsReport

# finished_reason -> outcome
OUTCOME_OF_FINISH = {"stop": "completed", "length": "completed", "repetition": "completed", "error": "failed", "abort": "aborted"}
GENERATION_HANDLERS = ("/v1/completions", "/v1/chat/completions", "/v1/responses")
COUNTERS = {
    "vllm:num_preemptions": "preemptions",
    "vllm:prompt_tokens": "prompt_tokens",
    "vllm:generation_tokens": "generation_tokens",
    "vllm:admission_rejections": "refused",
}
GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "queue_depth",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
}
HISTOGRAMS: dict[str, HistogramField] = {
    "vllm:time_to_first_token_seconds": "ttft_seconds",
    "vllm:inter_token_latency_seconds": "itl_seconds",
    "vllm:request_time_per_output_token_seconds": "tpot_seconds",
    "vllm:e2e_request_latency_seconds": "latency_seconds",
    "vllm:request_queue_time_seconds": "queue_seconds",
}


def raw_readings(text: str) -> tuple[dict[str, float], dict[str, float]]:
    """(counters, gauges) of one scrape. Counters are flat names: outcomes and token counts
    by their stats name, and each histogram's buckets as "NAME:le" plus "NAME:sum"."""
    counters: dict[str, float] = {}
    gauges: dict[str, float] = {}

    def add(into: dict[str, float], name: str, value: float) -> None:
        into[name] = into.get(name, 0.0) + value

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            value = float(sample.value)
            if family.name == "vllm:request_success" and sample.name.endswith("_total"):
                add(counters, OUTCOME_OF_FINISH.get(sample.labels.get("finished_reason", ""), "completed"), value)
            elif family.name in COUNTERS and sample.name.endswith("_total"):
                add(counters, COUNTERS[family.name], value)
            elif family.name in GAUGES:
                add(gauges, GAUGES[family.name], value)
            elif family.name in HISTOGRAMS and sample.name.endswith("_bucket"):
                add(counters, f"{HISTOGRAMS[family.name]}:{sample.labels['le']}", value)
            elif family.name in HISTOGRAMS and sample.name.endswith("_sum"):
                add(counters, f"{HISTOGRAMS[family.name]}:sum", value)
            elif family.name == "http_requests" and _client_error(sample.labels):
                add(counters, "rejected", value)
    return counters, gauges


def _client_error(labels: Mapping[str, str]) -> bool:
    return labels.get("handler") in GENERATION_HANDLERS and labels.get("status") == "4xx"


def worker_stats(totals: Mapping[str, float], gauges: Mapping[str, float]) -> StatsReport:
    """A worker's stats report (control/messages.py) from the running totals and the last gauges."""
    outcomes = {name: int(totals.get(name, 0)) for name in ("completed", "failed", "aborted", "refused", "rejected")}
    report: StatsReport = {
        "requests": sum(outcomes.values()),
        **outcomes,  # type: ignore[typeddict-item]
        "preemptions": int(totals.get("preemptions", 0)),
        "prompt_tokens": int(totals.get("prompt_tokens", 0)),
        "generation_tokens": int(totals.get("generation_tokens", 0)),
        "queue_depth": int(gauges.get("queue_depth", 0)),
        "running": int(gauges.get("running", 0)),
        "kv_cache_usage": float(gauges.get("kv_cache_usage", 0.0)),
    }
    for name in HISTOGRAMS.values():
        histogram = _histogram(name, totals.items())
        if histogram is not None:
            report[name] = histogram
    return report


def _histogram(name: str, totals: Iterable[tuple[str, float]]) -> HistogramReport | None:
    buckets: dict[float, float] = {}
    total_sum = 0.0
    for key, value in totals:
        metric, _, bound = key.partition(":")
        if metric != name:
            continue
        if bound == "sum":
            total_sum = value
        else:
            buckets[float(bound)] = value
    if float("inf") not in buckets:
        return None
    bounds = sorted(buckets)
    return {
        "bounds": bounds[:-1],
        "cumulative": [int(buckets[bound]) for bound in bounds],
        "sum": total_sum,
        "count": int(buckets[float("inf")]),
    }
