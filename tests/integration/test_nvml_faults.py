"""NVML faults in a running daemon: what is gone is reported failed, the rest keeps flowing,
and the windows the tuner reads hold no stale readings of a lost GPU."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from gputuned.config import with_overrides
from gputuned.daemon.service import Daemon
from gputuned.testing.fake_nvml import FakeNvml
from tests.integration.test_exporter import fixture_config, scrape


def wait_rounds(daemon: Daemon, rounds: int = 3) -> float:
    start = daemon.store.last_round_at() or 0.0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        latest = daemon.store.last_round_at() or 0.0
        if latest > start + rounds * 0.1:
            return latest
        time.sleep(0.05)
    raise AssertionError("the sampler stopped")


def served(daemon: Daemon) -> dict[str, dict[tuple, float]]:
    return {
        family.name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        for family in text_string_to_metric_families(scrape(daemon))
    }


def gpus_of(samples: dict[tuple, float]) -> set[str]:
    return {dict(labels)["gpu"] for labels in samples}


def test_a_lost_gpu_an_unsupported_field_and_a_vanished_library_mid_run(tmp_path: Path):
    fake = FakeNvml.with_gpus(8)
    daemon = Daemon(with_overrides(fixture_config(tmp_path), sampling={"interval_seconds": 0.1}), fake, psutil, supervise=False)
    daemon.start()
    try:
        wait_rounds(daemon)
        fake.gpus[3].lost = True
        fake.gpus[1].unsupported.add("nvmlDeviceGetTemperature")
        lost_at = time.monotonic()
        wait_rounds(daemon)
        degraded = served(daemon)
        after_loss = [t for t, _ in daemon.store.window("gputuned_gpu_utilization_ratio", ("3",)) if t > lost_at]
        others = [t for t, _ in daemon.store.window("gputuned_gpu_utilization_ratio", ("0",)) if t > lost_at]
        fake.vanish()
        wait_rounds(daemon)
        without_nvml = served(daemon)
    finally:
        daemon.stop()
    success = {dict(labels)["collector"]: value for labels, value in degraded["gputuned_collector_success"].items()}
    # The lost GPU fails every GPU collector (pod attribution is off: not a Kubernetes node).
    assert success == {"nvml": 0.0, "gpm": 0.0, "pcie": 0.0, "numa": 1.0, "host": 1.0, "kubelet": 1.0}
    assert gpus_of(degraded["gputuned_gpu_power_watts"]) == {"0", "1", "2", "4", "5", "6", "7"}
    assert gpus_of(degraded["gputuned_gpu_temperature_celsius"]) == {"0", "2", "4", "5", "6", "7"}
    assert after_loss == [] and others  # the tuner's windows: nothing new from the lost GPU, the others flow
    success = {dict(labels)["collector"]: value for labels, value in without_nvml["gputuned_collector_success"].items()}
    assert success == {"nvml": 0.0, "gpm": 0.0, "pcie": 0.0, "numa": 1.0, "host": 1.0, "kubelet": 1.0}
    assert "gputuned_gpu_power_watts" not in without_nvml
    assert without_nvml["gputuned_numa_hit"] and without_nvml["gputuned_host_memory_total_bytes"]
    assert next(iter(without_nvml["gputuned_sample_age_seconds"].values())) < 1.0
