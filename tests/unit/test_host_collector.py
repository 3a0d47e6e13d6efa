"""The host collector through the real psutil, on this machine (a real child process: tests/integration)."""

from __future__ import annotations

import time
from collections import namedtuple

import psutil
import pytest

from gputuned.collectors.host import HostCollector, busy_ratio
from gputuned.samples import WorkerTarget
from tests.helpers import names, values

Times = namedtuple("Times", "user nice system idle iowait")


def test_busy_ratio_excludes_idle_and_iowait():
    before = Times(10.0, 0.0, 5.0, 80.0, 5.0)
    after = Times(16.0, 0.0, 7.0, 100.0, 7.0)
    assert busy_ratio(before, after) == pytest.approx(8 / 30)


def test_busy_ratio_of_no_elapsed_time_is_unknown():
    same = Times(1.0, 0.0, 1.0, 1.0, 0.0)
    assert busy_ratio(same, same) is None


def test_host_memory_and_per_core_busy_after_two_ticks():
    collector = HostCollector(psutil)
    first = collector.collect([WorkerTarget()])
    assert "gputuned_host_cpu_busy_ratio" not in names(first)
    spin_until = time.monotonic() + 0.2  # 20 clock ticks (USER_HZ 100) on every core between the readings
    while time.monotonic() < spin_until:
        pass
    second = collector.collect([WorkerTarget()])
    busy = values(second, "gputuned_host_cpu_busy_ratio")
    assert set(busy) == {(str(cpu),) for cpu in range(psutil.cpu_count())}
    assert all(0.0 <= ratio <= 1.0 for ratio in busy.values())
    total = values(second, "gputuned_host_memory_total_bytes")[()]
    with open("/proc/meminfo") as meminfo:
        mem_total_kb = int(meminfo.readline().split()[1])
    assert total == mem_total_kb * 1024
    assert 0 < values(second, "gputuned_host_memory_available_bytes")[()] <= total
