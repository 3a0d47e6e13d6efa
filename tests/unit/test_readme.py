"""The README documents every metric family the exporter can serve."""

from __future__ import annotations

from pathlib import Path

from gputuned.catalog import METRIC_SPECS

README = (Path(__file__).parent.parent.parent / "README.md").read_text()


def test_every_metric_family_is_documented_in_the_readme():
    missing = [spec.name for spec in METRIC_SPECS if f"`{spec.name}`" not in README]
    assert missing == []
