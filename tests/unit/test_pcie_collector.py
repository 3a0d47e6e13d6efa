"""The pcie collector: counters or integrated throughput, link capacity, utilisation."""

from __future__ import annotations

import pytest

from gputuned.collectors.nvml_session import NvmlSession
from gputuned.collectors.pcie import PcieCollector, link_capacity_bytes_per_second
from gputuned.samples import WorkerTarget
from gputuned.testing.fake_nvml import FakeGpu, FakeNvml
from tests.conftest import host_root
from tests.helpers import ManualClock, names, values

_, SYS = host_root("dual-socket-8gpu")
GEN5_X16 = 32e9 * 128 / 130 / 8 * 16


def make(gpus: list[FakeGpu]) -> tuple[PcieCollector, FakeNvml, ManualClock]:
    clock = ManualClock()
    fake = FakeNvml(gpus, clock=clock)
    session = NvmlSession(fake, SYS, clock=clock)
    return PcieCollector(session, fake, clock), fake, clock


@pytest.mark.parametrize(
    ("generation", "width", "expected"),
    [
        (1, 16, 4.0e9),
        (3, 16, 8e9 * 128 / 130 / 8 * 16),
        (4, 8, 16e9 * 128 / 130),
        (5, 16, GEN5_X16),
        (6, 16, 64e9 * 242 / 256 / 8 * 16),
    ],
)
def test_link_capacity(generation, width, expected):
    assert link_capacity_bytes_per_second(generation, width) == pytest.approx(expected)


def test_unknown_generation_or_zero_width_has_no_capacity():
    assert link_capacity_bytes_per_second(9, 16) is None
    assert link_capacity_bytes_per_second(4, 0) is None


def test_counters_rates_and_utilisation_from_the_field_counters():
    collector, _, clock = make(FakeNvml.with_gpus(1).gpus)
    first = collector.collect([WorkerTarget()])
    assert first.errors == [] and first.notes == []
    assert "gputuned_pcie_utilization_ratio" not in names(first)  # needs two ticks
    clock.advance(2.0)
    out = collector.collect([WorkerTarget()])
    assert values(out, "gputuned_pcie_tx_bytes_total")[("0",)] == pytest.approx(4.0e9, rel=1e-6)
    assert values(out, "gputuned_pcie_rx_bytes_total")[("0",)] == pytest.approx(18.0e9, rel=1e-6)
    assert values(out, "gputuned_pcie_link_generation") == {("0",): 5.0}
    assert values(out, "gputuned_pcie_link_max_generation") == {("0",): 5.0}
    assert values(out, "gputuned_pcie_link_width") == {("0",): 16.0}
    assert values(out, "gputuned_pcie_link_max_width") == {("0",): 16.0}
    assert values(out, "gputuned_pcie_link_capacity_bytes_per_second")[("0",)] == pytest.approx(GEN5_X16)
    assert values(out, "gputuned_pcie_replays_total") == {("0",): 1.0}
    # rx is the busier direction: 9 GB/s of a 63 GB/s link.
    assert values(out, "gputuned_pcie_utilization_ratio")[("0",)] == pytest.approx(9.0e9 / GEN5_X16, rel=1e-6)


def test_a_driver_without_field_counters_falls_back_to_integrated_throughput():
    collector, _, clock = make(FakeNvml.with_gpus(2, pcie_counters=False).gpus)
    collector.collect([WorkerTarget()])
    clock.advance(1.0)
    collector.collect([WorkerTarget()])
    clock.advance(1.0)
    out = collector.collect([WorkerTarget()])
    assert out.errors == []
    # Two seconds at 9e9 B/s rx (reported in whole KB/s by NVML).
    assert values(out, "gputuned_pcie_rx_bytes_total")[("1",)] == pytest.approx(18.0e9, rel=1e-3)
    assert values(out, "gputuned_pcie_tx_bytes_total")[("1",)] == pytest.approx(4.0e9, rel=1e-3)
    assert values(out, "gputuned_pcie_utilization_ratio")[("1",)] == pytest.approx(9.0e9 / GEN5_X16, rel=1e-3)


def test_a_downtrained_link_shows_the_reduced_capacity_and_higher_utilisation():
    collector, _, clock = make(FakeNvml.with_gpus(1, link_width=8, link_generation=4).gpus)
    collector.collect([WorkerTarget()])
    clock.advance(1.0)
    out = collector.collect([WorkerTarget()])
    capacity = 16e9 * 128 / 130 / 8 * 8
    assert values(out, "gputuned_pcie_link_capacity_bytes_per_second")[("0",)] == pytest.approx(capacity)
    assert values(out, "gputuned_pcie_utilization_ratio")[("0",)] == pytest.approx(min(9.0e9 / capacity, 1.0))


def test_missing_link_readings_are_skipped_and_the_rest_still_reported():
    gpus = FakeNvml.with_gpus(1).gpus
    gpus[0].unsupported.update({"nvmlDeviceGetPcieReplayCounter", "nvmlDeviceGetCurrPcieLinkGeneration"})
    collector, _, _clock = make(gpus)
    out = collector.collect([WorkerTarget()])
    assert out.errors == []
    assert "gputuned_pcie_replays_total" not in names(out)
    assert "gputuned_pcie_link_capacity_bytes_per_second" not in names(out)
    assert "gputuned_pcie_tx_bytes_total" in names(out)


def test_a_lost_gpu_is_an_error_for_that_gpu_only():
    collector, fake, clock = make(FakeNvml.with_gpus(3).gpus)
    collector.collect([WorkerTarget()])
    fake.gpus[0].lost = True
    clock.advance(1)
    out = collector.collect([WorkerTarget()])
    assert len(out.errors) == 1 and "GPU 0" in out.errors[0]
    assert set(values(out, "gputuned_pcie_rx_bytes_total")) == {("1",), ("2",)}
