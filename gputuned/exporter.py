"""Serves the store's newest snapshots as Prometheus metrics.

A prometheus-client custom Collector: a scrape only reads what the sampler already
published (no NVML or /proc access on the scrape path), adds the self-health series, and
says how old the data is in `gputuned_sample_age_seconds`.
"""

from __future__ import annotations

import platform
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer

from gputuned import __version__
from gputuned.samples import HistogramSample, MetricSpec
from gputuned.store import SampleStore

COLLECTOR = ("collector",)
COLLECTOR_SUCCESS = MetricSpec(
    "gputuned_collector_success", "gauge", "1 if the collector's last tick read everything it should, else 0.", COLLECTOR
)
COLLECTOR_DURATION = MetricSpec(
    "gputuned_collector_duration_seconds", "gauge", "How long the collector's last tick took.", COLLECTOR
)
SAMPLE_AGE = MetricSpec(
    "gputuned_sample_age_seconds", "gauge", "Seconds since the served samples were taken (the last complete round).", ()
)

SKIPPED_ROUNDS = MetricSpec(
    "gputuned_sampler_skipped_rounds_total", "counter", "Sampling rounds skipped because the previous one was still running.", ()
)

JOB_ERRORS = MetricSpec(
    "gputuned_job_errors_total", "counter", "Runs of a scheduled job (sampling, a worker's tuning) that raised.", ("job",)
)

BUILD_INFO = MetricSpec(
    "gputuned_build_info", "gauge", "The gputuned version running and the Python it runs on; always 1.", ("version", "python")
)

SELF_SPECS = (COLLECTOR_SUCCESS, COLLECTOR_DURATION, SAMPLE_AGE, SKIPPED_ROUNDS, JOB_ERRORS, BUILD_INFO)


def _family(spec: MetricSpec) -> Any:
    if spec.kind == "counter":
        # CounterMetricFamily takes the name without _total and adds it back to the sample.
        return CounterMetricFamily(spec.name.removesuffix("_total"), spec.help, labels=spec.labels)
    if spec.kind == "histogram":
        return HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


def _bound(upper: float) -> str:
    return "+Inf" if upper == float("inf") else repr(float(upper))


class StoreExporter:
    """prometheus-client collector over a SampleStore."""

    def __init__(self, store: SampleStore, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Any] = {}
        success = _family(COLLECTOR_SUCCESS)
        duration = _family(COLLECTOR_DURATION)
        for snapshot in self._store.snapshots():
            success.add_metric([snapshot.collector], 1.0 if snapshot.success else 0.0)
            duration.add_metric([snapshot.collector], snapshot.duration_seconds)
            for sample in snapshot.samples:
                family = families.get(sample.spec.name)
                if family is None:
                    family = families[sample.spec.name] = _family(sample.spec)
                if isinstance(sample, HistogramSample):
                    buckets = [(_bound(upper), count) for upper, count in sample.buckets]
                    family.add_metric(list(sample.labels), buckets, sample.sum)
                else:
                    family.add_metric(list(sample.labels), sample.value)
        yield from families.values()
        yield success
        yield duration
        skipped = _family(SKIPPED_ROUNDS)
        skipped.add_metric([], self._store.skipped_rounds())
        yield skipped
        job_errors = _family(JOB_ERRORS)
        for job, count in sorted(self._store.job_errors().items()):
            job_errors.add_metric([job], count)
        yield job_errors
        build = _family(BUILD_INFO)
        build.add_metric([__version__, platform.python_version()], 1.0)
        yield build
        last_round = self._store.last_round_at()
        if last_round is not None:
            age = _family(SAMPLE_AGE)
            age.add_metric([], max(self._clock() - last_round, 0.0))
            yield age


def build_registry(store: SampleStore) -> CollectorRegistry:
    """Our metrics plus the daemon's own process_* metrics (CPU, RSS, fds), like every exporter."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreExporter(store))
    ProcessCollector(registry=registry)
    return registry


class _QuietHandler(WSGIRequestHandler):
    """No line on stderr for every scrape."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ARG002 - the base class's signature
        return


def serve_metrics(registry: CollectorRegistry, host: str, port: int, landing: Callable[[], str]) -> Any:
    """Starts the HTTP server in a daemon thread: /metrics, and the `landing` page at `/` (as
    node_exporter has one); returns the server (its .server_address has the bound port)."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/":
            status, kind, body = "200 OK", "text/html; charset=utf-8", landing().encode()
        else:
            status, kind, body = "404 Not Found", "text/plain; charset=utf-8", b"not found; the metrics are at /metrics\n"
        start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
        return [body]

    family, _type, _proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    server = make_server(str(address[0]), port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="gputuned-http", daemon=True).start()
    return server
