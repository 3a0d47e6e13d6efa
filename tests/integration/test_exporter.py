"""The exporter: what a scrape serves, that it never touches NVML, and promtool's verdict."""

from __future__ import annotations

import dataclasses
import grp
import os
import stat
import subprocess
import time
from pathlib import Path

import psutil
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gputuned.catalog import METRIC_SPECS
from gputuned.collectors import gpm, kubelet
from gputuned.collectors import tuner as tuner_collector
from gputuned.collectors import worker as worker_collector
from gputuned.config import Config, PathsConfig, WorkerConfig, with_overrides
from gputuned.daemon.service import Daemon
from gputuned.exporter import build_registry
from gputuned.samples import WorkerTarget
from gputuned.testing.fake_nvml import FakeNvml
from tests.conftest import host_root

PROC, SYS = host_root("dual-socket-8gpu")


def fixture_config(runtime: Path) -> Config:
    """The fixture host's paths, with `runtime` (a test's tmp_path) for the daemon's sockets and state."""
    paths = {"proc_root": str(PROC), "sys_root": str(SYS), "runtime_dir": str(runtime), "state_dir": str(runtime)}
    paths |= {"kubelet_socket": f"{runtime}/no-kubelet.sock"}  # not a Kubernetes node: pod attribution off
    return with_overrides(Config(), paths=paths, metrics={"listen": "127.0.0.1:0"})


def started_daemon(fake: FakeNvml, runtime: Path) -> Daemon:
    fake.gpus[0].processes[4242] = 1 << 30
    fake.gpus[0].pending_xids.append(79)
    daemon = Daemon(fixture_config(runtime), fake, psutil, supervise=False, watch=WorkerTarget(pid=4242, gpu=0))
    daemon.start()
    return daemon


def scrape(daemon: Daemon) -> str:
    return generate_latest(build_registry(daemon.store)).decode()


def test_every_metric_family_of_the_catalog_is_served_from_fixtures_and_fake_nvml(tmp_path: Path):
    fake = FakeNvml.with_gpus(8)
    daemon = started_daemon(fake, tmp_path)
    try:
        text = scrape(daemon)
    finally:
        daemon.stop()
    served = {family.name for family in text_string_to_metric_families(text)}
    expected = {spec.name.removesuffix("_total") for spec in METRIC_SPECS}
    # Rates and GPM's activity need two rounds and this test scraped after one; psutil reads the live /proc,
    # where the fixture's worker pid 4242 does not exist (the integration test covers both).
    # The worker and tuner collectors run only when the daemon supervises a worker (this one does not);
    # pod attribution needs a kubelet (tests/integration/test_kubelet.py serves one).
    not_here = {
        "gputuned_pcie_utilization_ratio",
        *(spec.name for spec in gpm.SPECS),
        "gputuned_host_cpu_busy_ratio",
        "gputuned_worker_cpu_seconds",
        "gputuned_worker_resident_memory_bytes",
        "gputuned_worker_threads",
        *(spec.name.removesuffix("_total") for spec in (*worker_collector.SPECS, *tuner_collector.SPECS, *kubelet.SPECS)),
    }
    assert expected - served == not_here


def test_a_scrape_makes_no_nvml_call(tmp_path: Path):
    fake = FakeNvml.with_gpus(8)
    daemon = started_daemon(fake, tmp_path)
    try:
        before = fake.calls
        for _ in range(20):
            scrape(daemon)
        assert fake.calls == before
    finally:
        daemon.stop()


def test_promtool_finds_nothing_to_lint(promtool, tmp_path: Path):
    daemon = started_daemon(FakeNvml.with_gpus(8), tmp_path)
    try:
        text = scrape(daemon)
    finally:
        daemon.stop()
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_collector_health_and_sample_age_are_served(tmp_path: Path):
    fake = FakeNvml.with_gpus(1)
    fake.vanish()
    daemon = Daemon(fixture_config(tmp_path), fake, psutil, supervise=False)
    daemon.start()
    try:
        families = {f.name: f for f in text_string_to_metric_families(scrape(daemon))}
    finally:
        daemon.stop()
    success = {s.labels["collector"]: s.value for s in families["gputuned_collector_success"].samples}
    assert success == {"nvml": 0.0, "gpm": 0.0, "pcie": 0.0, "numa": 1.0, "host": 1.0, "kubelet": 1.0}  # off, not failing
    durations = families["gputuned_collector_duration_seconds"].samples
    assert len(durations) == 6 and all(s.value >= 0 for s in durations)
    (age,) = families["gputuned_sample_age_seconds"].samples
    assert 0 <= age.value < 5
    assert "process_resident_memory_bytes" in {s.name for f in families.values() for s in f.samples}


def test_disabled_collectors_do_not_run(tmp_path: Path):
    config = with_overrides(fixture_config(tmp_path), collectors={"nvml": False, "gpm": False, "pcie": False, "kubelet": False})
    fake = FakeNvml.with_gpus(1)
    daemon = Daemon(config, fake, psutil, supervise=False)
    daemon.start()
    try:
        collectors = {s.collector for s in daemon.store.snapshots()}
    finally:
        daemon.stop()
    assert collectors == {"numa", "host"}
    assert fake.calls == 0


def test_the_admin_socket_group_comes_from_the_first_worker_even_before_gpus_are_counted(tmp_path: Path):
    """With [workers_per_gpu] no worker is defined until NVML has counted the GPUs; the
    admin socket takes the template's control_group."""
    config = dataclasses.replace(
        fixture_config(tmp_path), workers_per_gpu=WorkerConfig(control_group=grp.getgrgid(os.getgid()).gr_name)
    )
    daemon = Daemon(config, FakeNvml.with_gpus(2), psutil, supervise=False)
    daemon.start()
    try:
        mode = daemon.admin_socket.stat()
    finally:
        daemon.stop()
    assert stat.S_IMODE(mode.st_mode) == 0o660 and mode.st_gid == os.getgid()


def test_paths_default_to_the_live_host():
    assert PathsConfig() == PathsConfig(proc_root="/proc", sys_root="/sys")


def test_a_round_slower_than_the_interval_is_skipped_and_counted(tmp_path: Path):
    fake = FakeNvml.with_gpus(1)
    slow_power = fake.nvmlDeviceGetPowerUsage

    def power_after_a_stall(handle):
        time.sleep(0.35)
        return slow_power(handle)

    config = with_overrides(fixture_config(tmp_path), sampling={"interval_seconds": 0.1})
    daemon = Daemon(config, fake, psutil, supervise=False)
    daemon.start()
    try:
        fake.nvmlDeviceGetPowerUsage = power_after_a_stall
        deadline = time.monotonic() + 5
        while daemon.store.skipped_rounds() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        families = {f.name: f for f in text_string_to_metric_families(scrape(daemon))}
    finally:
        daemon.stop()
    (skipped,) = families["gputuned_sampler_skipped_rounds"].samples
    assert skipped.value >= 1
