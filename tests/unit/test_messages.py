"""The typed messages: one stats schema, one histogram check, decisions with structure."""

from __future__ import annotations

import json

from gputuned.control.histogram import LATENCY_BUCKETS_SECONDS, Histogram
from gputuned.control.messages import (
    GENERATIVE_STATS,
    STATS_HISTOGRAMS,
    STATS_NUMBERS,
    TOKEN_STATS,
    Action,
    Decision,
    Evidence,
    read_histogram,
    read_stats,
)
from gputuned.worker.stats import WorkerStats


def test_what_the_worker_reports_passes_the_check_whole():
    stats = WorkerStats(lambda: 3, lambda: 2)
    stats.request_received()
    stats.request_completed(0.004)
    stats.batch_done(4, 0.01, pool_hit=True, h2d_bytes=64, oom=False, tokens=0, padding_tokens=0)
    report = stats.snapshot()
    assert set(report) == (set(STATS_NUMBERS) | set(STATS_HISTOGRAMS)) - set(GENERATIVE_STATS) - set(TOKEN_STATS)
    assert read_stats(report) == report


def test_a_histogram_snapshot_passes_and_a_malformed_one_does_not():
    histogram = Histogram(LATENCY_BUCKETS_SECONDS)
    histogram.observe(0.02, 3)
    good = histogram.snapshot()
    assert read_histogram(good) == good
    assert read_histogram({**good, "cumulative": good["cumulative"][:-1]}) is None  # no +Inf bucket
    assert read_histogram({**good, "bounds": list(reversed(good["bounds"]))}) is None  # bounds must rise
    falling = [*good["cumulative"][:-1], 0]
    assert read_histogram({**good, "cumulative": falling}) is None  # cumulative counts never fall
    assert read_histogram({**good, "sum": "0.06"}) is None
    assert read_histogram([1, 2]) is None


def test_an_agents_partial_or_malformed_stats_keep_what_is_well_formed():
    raw = {"completed": 7, "failed": "many", "refused": True, "latency_seconds": {"bounds": [0.1]}, "custom": 1}
    assert read_stats(raw) == {"completed": 7}


def test_a_histogram_without_a_count_takes_its_last_cumulative_count():
    assert read_histogram({"bounds": [0.1, 0.2], "cumulative": [1, 3, 4], "sum": 0.5}) == {
        "bounds": [0.1, 0.2],
        "cumulative": [1, 3, 4],
        "sum": 0.5,
        "count": 4,
    }


def test_a_decision_serialises_its_action_tuner_and_evidence_as_plain_fields():
    evidence = Evidence("goodput", 5, True, 0.041, 0.03, 0.02)
    decision = Decision(1.0, "max_batch_size", Action.KEEP, 8, 16, "kept", tuner="batch", evidence=evidence)
    line = json.loads(json.dumps(decision.to_json()))
    assert line["action"] == "keep" and line["tuner"] == "batch"
    assert line["evidence"] == {"metric": "goodput", "windows": 5, "interleaved": True, "gain": 0.041, "bar": 0.03, "noise": 0.02}
    # the fields the log had before stay as they were
    assert {"t", "knob", "action", "old", "new", "reason", "baseline", "trial"} <= set(line)
