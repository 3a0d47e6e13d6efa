"""The landing page: one self-contained HTML document from a status report (pure)."""

from __future__ import annotations

from html.parser import HTMLParser

from gputuned.page import plot, render


class Document(HTMLParser):
    """Collects tags, attributes and text, and fails on what a browser would fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def entry(name: str, state: str, knobs: dict[str, int], reason: str = "kept") -> dict:
    return {
        "name": name,
        "state": state,
        "message": "exited with code 1; restarting in 0.5 s",
        "pid": 42,
        "model": "resnet-mini",
        "device": "cpu",
        "restarts": 0,
        "tuner": {"mode": "auto", "phase": "settled", "frozen_knobs": []},
        "knobs": knobs,
        "performance": {
            "window_seconds": 10.0,
            "throughput_per_second": 120.0,
            "goodput_per_second": 118.5,
            "p99_seconds": 0.042,
        },
        "decisions": [{"t": 1_800_000_000.0, "action": "keep", "knob": "max_batch_size", "old": 1, "new": 2, "reason": reason}],
    }


def test_every_worker_with_its_state_knobs_figures_plot_and_decisions():
    report = {
        "daemon": {"version": "0.1.0", "uptime_seconds": 61.2},
        "gpus": [{"gpu": 0, "name": "NVIDIA H200", "utilization": 0.5, "numa_node": 1}],
        "workers": [
            entry("left", "ready", {"max_batch_size": 8}),
            entry("right", "backoff", {"max_batch_size": 2}, reason="<script>alert(1)</script>"),
        ],
    }
    series = {"left": [(295.0, 100.0, 0.05), (5.0, 118.0, 0.04)], "right": []}
    page = render(report, series, {"left": 0.1, "right": 0.05}, 300.0, "gpu-host-1")
    document = Document()
    document.feed(page)
    ids = {attrs.get("id") for _, attrs in document.tags}
    assert {"worker-left", "worker-right"} <= ids
    text = "".join(document.text)
    assert "gpu-host-1" in text and "NVIDIA H200" in text and "50%" in text
    assert "goodput 118.5/s" in text and "p99 42.0 ms" in text and "(SLO 100 ms)" in text and "(SLO 50 ms)" in text
    assert "exited with code 1" in text  # a worker that is not ready says why
    assert "<script>" not in page and "&lt;script&gt;" in page  # what a worker sends is text, never markup
    assert ("a", {"href": "/metrics"}) in document.tags
    assert ("meta", {"http-equiv": "refresh", "content": "2"}) in document.tags
    assert not any(tag in ("script", "link", "img") for tag, _ in document.tags)  # nothing fetched from anywhere
    assert sum(1 for tag, _ in document.tags if tag == "svg") == 2


def test_the_plot_draws_goodput_p99_and_the_slo():
    svg = plot([(290.0, 50.0, 0.05), (150.0, 100.0, 0.2), (10.0, 100.0, None)], 0.1, 300.0)
    lines = [part.split('points="')[1].split('"')[0] for part in svg.split("<polyline")[1:]]
    goodput, slo, p99 = (line.split() for line in lines)
    assert len(goodput) == 3 and len(p99) == 2  # a window without a p99 is left out of its line
    assert slo == ["0.0,45.0", "360.0,45.0"]  # the SLO at mid-height, across the whole span
    assert p99[1].endswith(",0.0")  # p99 at twice the SLO: the top
    assert goodput[1].endswith(",0.0") and goodput[0].endswith(",45.0")  # goodput scaled to its peak


def test_an_llm_worker_shows_its_tokens_ttft_and_tpot_against_their_objectives_and_a_note():
    llm = entry("llama", "ready", {"max_num_active_seqs": 16})
    llm["note"] = "knobs read-only: no plugin socket is configured"
    llm["tuner"] |= {"slo_ttft_seconds": 1.0, "slo_tpot_seconds": 0.05}
    llm["performance"]["generation"] = {
        "output_tokens_per_second": 1712.4,
        "ttft_p99": 0.8123,
        "tpot_p99": 0.0311,
        "running": 15.6,
        "kv_cache_usage": 0.42,
        "preemptions": 0,
    }
    report = {"daemon": {"version": "0.2.0", "uptime_seconds": 5.0}, "gpus": [], "workers": [llm]}
    document = Document()
    document.feed(render(report, {"llama": []}, {"llama": 0.1}, 300.0, "host"))
    text = "".join(document.text)
    assert "within TTFT 1000 ms and TPOT 50 ms, 1712 tokens/s" in text
    assert "TTFT p99 812 ms, TPOT p99 31 ms; 16 running, KV cache 42%, 0 preempted" in text
    assert "knobs read-only: no plugin socket is configured" in text
    assert "GPU:" not in text  # no energy reading: no line

    llm["performance"] |= {"sm_active": 0.5, "watts": 300.0, "joules_per_request": 35.3, "joules_per_token": 0.175}
    document = Document()
    document.feed(render(report, {"llama": []}, {"llama": 0.1}, 300.0, "host"))
    assert "GPU: SMs 50% active, 300 W attributed, 35.3 J/request, 0.175 J/token (tuning for goodput)" in "".join(document.text)
