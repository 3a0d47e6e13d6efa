"""The sweep's pure parts: grids, the best point, the CSV and the plot."""

from __future__ import annotations

import csv

import pytest

from gputuned.sweep import SweepError, SweepPoint, best_point, parse_grid, plot, points, write_csv

RESULTS = [
    SweepPoint({"max_batch_size": 1, "streams": 1}, 250.0, 12.0, 0.29, 0),
    SweepPoint({"max_batch_size": 16, "streams": 2}, 900.0, 890.0, 0.089, 0),
    SweepPoint({"max_batch_size": 64, "streams": 2}, 1050.0, 400.0, 0.32, 0),
]


def test_parse_grid_and_points():
    grid = parse_grid(["max_batch_size=1,4", "streams=1,2,3"])
    assert grid == {"max_batch_size": [1, 4], "streams": [1, 2, 3]}
    assert len(points(grid)) == 6 and points(grid)[0] == {"max_batch_size": 1, "streams": 1}
    for bad in (["streams"], ["streams=a,b"], [], ["=1"]):
        with pytest.raises(SweepError):
            parse_grid(bad)


def test_the_best_point_is_the_highest_goodput_within_the_slo():
    assert best_point(RESULTS, 0.1).knobs == {"max_batch_size": 16, "streams": 2}
    assert best_point(RESULTS, 0.01).knobs == {"max_batch_size": 16, "streams": 2}  # none within: highest goodput
    assert best_point([], 0.1) is None


def test_csv_and_png(tmp_path):
    write_csv(RESULTS, tmp_path / "s.csv")
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert rows[1] == {
        "max_batch_size": "16",
        "streams": "2",
        "throughput_per_second": "900.000",
        "goodput_per_second": "890.000",
        "p99_seconds": "0.089000",
        "errors": "0",
    }
    plot(RESULTS, 0.1, best_point(RESULTS, 0.1), tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
