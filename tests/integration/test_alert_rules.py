"""The Prometheus rules in deploy/prometheus: valid for promtool, every alert unit-tested by
`promtool test rules` (input series -> the alerts that fire), and every metric they read is one
the exporter serves."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gputuned.testing.processes import REPO_ROOT
from tests.dashboard_queries import unknown_metrics

RULES_DIR = REPO_ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "gputuned-rules.yaml"
RULE_TESTS = RULES_DIR / "gputuned-rules.test.yaml"
RECORDED_NAME = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed (Debian package 'prometheus'); scripts/setup.sh installs it")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_alert_is_seen_firing_in_a_unit_test():
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    fired = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert alerts - fired == set()
    assert len(alerts) >= 10


def test_the_rules_read_only_metrics_the_exporter_serves():
    records = {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():
        read = set(RECORDED_NAME.findall(rule["expr"]))  # recorded series: level:metric:operations
        assert read <= records, rule
        assert unknown_metrics(RECORDED_NAME.sub("", rule["expr"])) == set(), rule


def test_the_unit_tests_catch_a_wrong_threshold(tmp_path: Path):
    broken = RULES.read_text().replace("rate1h > 14.4 * 0.01", "rate1h > 0.9")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path)
    tested = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert tested.returncode != 0 and "GputunedSloBurnFast" in tested.stdout + tested.stderr


def test_the_fleet_scrape_config_example_is_valid():
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout
