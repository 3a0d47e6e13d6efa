"""Window arithmetic over cumulative worker stats."""

from __future__ import annotations

import pytest

from gputuned.performance import histogram_delta, measure, quantile, within_objective

BOUNDS = [0.01, 0.02, 0.05, 0.1]


def stats(completed: int, cumulative: list[int], failed: int = 0, latency_sum: float = 0.0, items: int = 0) -> dict:
    return {
        "completed": completed,
        "failed": failed,
        "latency_seconds": {"bounds": BOUNDS, "cumulative": cumulative, "sum": latency_sum, "count": cumulative[-1]},
        "batch_size": {"sum": items},
    }


def test_quantile_interpolates_inside_the_bucket():
    counts = [0, 100, 0, 0, 0]  # all between 10 and 20 ms
    assert quantile(BOUNDS, counts, 0.5) == pytest.approx(0.015)
    assert quantile(BOUNDS, counts, 0.99) == pytest.approx(0.0199)
    assert quantile(BOUNDS, [0, 0, 0, 0, 0], 0.5) is None
    assert quantile(BOUNDS, [0, 0, 0, 0, 5], 0.99) == 0.1  # +Inf answers with the last bound


def test_window_is_the_difference_of_two_reports():
    older = stats(100, [10, 60, 90, 100, 100])
    newer = stats(300, [10, 160, 290, 300, 300], failed=2)
    perf = measure(older, newer, 2.0, slo_seconds=0.05)
    assert perf.failed == 2 and perf.throughput == 100.0 and perf.goodput == 100.0
    assert histogram_delta(older["latency_seconds"], newer["latency_seconds"]) == (BOUNDS, [0, 100, 100, 0, 0])
    assert perf.p50 == pytest.approx(0.02)
    assert 0.02 < perf.p99 <= 0.05


def test_requests_in_the_worker_and_items_per_request():
    # 200 requests in 2 s, 4 s spent inside in all (20 ms each): 2 inside on average (Little's law).
    perf = measure(
        stats(100, [10, 60, 90, 100, 100], latency_sum=1.0, items=300),
        stats(300, [10, 160, 290, 300, 300], latency_sum=5.0, items=900),
        2.0,
        slo_seconds=0.05,
    )
    assert perf.in_system == pytest.approx(2.0)
    assert perf.items_per_request == pytest.approx(3.0)


def test_a_restart_between_reports_gives_no_window():
    assert measure(stats(500, [500] * 5), stats(10, [10] * 5), 1.0, 0.1) is None
    assert measure(stats(1, [1] * 5), stats(2, [2] * 5), 0.0, 0.1) is None


def test_fraction_within_interpolates_at_the_threshold():
    from gputuned.performance import fraction_within

    counts = [10, 10, 0, 0, 0]  # 10 under 10 ms, 10 between 10 and 20 ms
    assert fraction_within(BOUNDS, counts, 0.015) == pytest.approx(0.75)
    assert fraction_within(BOUNDS, counts, 0.5) == 1.0
    assert fraction_within(BOUNDS, counts, 0.005) == pytest.approx(0.25)
    assert fraction_within(BOUNDS, [0, 0, 0, 0, 4], 0.2) == 0.0
    assert fraction_within(BOUNDS, [0] * 5, 0.1) is None


def test_requests_within_an_objective_are_counted_from_a_cumulative_histogram():
    histogram = {"bounds": [0.05, 0.1, 0.2], "cumulative": [50, 80, 90, 100], "sum": 9.0, "count": 100}
    assert within_objective(histogram, 0.1) == 80
    assert within_objective(histogram, 0.075) == 65  # halfway through the 0.05-0.1 bucket
    assert within_objective(histogram, 5.0) == 90  # the +Inf bucket is never within
    assert within_objective({**histogram, "cumulative": [0, 0, 0, 0]}, 0.1) == 0
