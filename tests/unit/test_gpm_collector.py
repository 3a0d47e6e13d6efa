"""The gpm collector on the fake NVML: activity between two ticks, MIG instances, GPUs and
drivers without GPM, counters held by another profiler, NVML re-opened."""

from __future__ import annotations

import pytest

from gputuned.collectors.gpm import GpmCollector
from gputuned.collectors.nvml_session import NvmlSession
from gputuned.samples import WorkerTarget
from gputuned.testing.fake_nvml import FakeNvml
from tests.conftest import host_root
from tests.helpers import ManualClock, names, values

_, DUAL_SOCKET_SYS = host_root("dual-socket-8gpu")
MIB = 2**20


def make(gpus: int = 1, **gpu_fields: object) -> tuple[GpmCollector, FakeNvml, ManualClock]:
    clock = ManualClock()
    fake = FakeNvml(FakeNvml.with_gpus(gpus, **gpu_fields).gpus, clock=clock)
    session = NvmlSession(fake, DUAL_SOCKET_SYS, retry_seconds=30, clock=clock)
    return GpmCollector(session, fake, clock, held_retry_seconds=60), fake, clock


def tick(collector: GpmCollector, clock: ManualClock):
    clock.advance(1.0)
    return collector.collect([WorkerTarget()])


def test_the_first_tick_only_samples_and_the_second_reports_the_interval_between():
    collector, _, clock = make()
    first = tick(collector, clock)
    assert first.samples == [] and first.errors == [] and first.notes == []
    second = tick(collector, clock)
    assert second.errors == [] and second.notes == []
    assert values(second, "gputuned_gpu_sm_active_ratio") == {("0", ""): pytest.approx(0.71)}
    assert values(second, "gputuned_gpu_sm_occupancy_ratio") == {("0", ""): pytest.approx(0.38)}
    assert values(second, "gputuned_gpu_tensor_active_ratio") == {("0", ""): pytest.approx(0.44)}
    assert values(second, "gputuned_gpu_dram_bandwidth_utilization_ratio") == {("0", ""): pytest.approx(0.52)}
    assert values(second, "gputuned_gpu_nvlink_throughput_bytes_per_second") == {
        ("0", "", "rx"): 12_000 * MIB,
        ("0", "", "tx"): 11_000 * MIB,
    }


def test_readings_follow_the_gpu_and_two_buffers_per_gpu_are_reused():
    collector, fake, clock = make(gpus=8)
    tick(collector, clock)
    fake.gpus[3].sm_active = 12.5
    out = tick(collector, clock)
    active = values(out, "gputuned_gpu_sm_active_ratio")
    assert len(active) == 8 and active[("3", "")] == pytest.approx(0.125)
    for _ in range(5):
        tick(collector, clock)
    assert len(fake.gpm_samples) == 16  # no buffer allocated per tick
    collector.close()
    assert fake.gpm_samples == {}


def test_a_gpu_without_gpm_is_noted_once_and_read_no_more():
    collector, fake, clock = make(gpus=2)
    fake.gpus[1].gpm_supported = False
    first = tick(collector, clock)
    assert first.notes == ["GPU 1: no GPM profiling counters: GPM needs a Hopper or newer GPU"]
    out = tick(collector, clock)
    assert out.notes == [] and out.errors == []
    assert set(values(out, "gputuned_gpu_sm_active_ratio")) == {("0", "")}
    calls = fake.calls
    tick(collector, clock)
    assert fake.calls - calls == 3  # GPU 0: MIG mode, sample, metrics; GPU 1: nothing


def test_a_driver_without_gpm_is_noted_and_the_collector_stays_successful():
    collector, _, clock = make(unsupported={"nvmlGpmQueryDeviceSupport"})
    out = tick(collector, clock)
    assert out.errors == []
    assert out.notes == ["GPU 0: no GPM profiling counters: this driver has no GPM (it needs driver 520 or newer)"]
    assert tick(collector, clock).samples == []


def test_a_card_without_nvlink_reports_the_rest_and_notes_what_is_missing():
    collector, _, clock = make(nvlink=False)
    tick(collector, clock)
    out = tick(collector, clock)
    assert "gputuned_gpu_nvlink_throughput_bytes_per_second" not in names(out)
    assert "gputuned_gpu_sm_active_ratio" in names(out)
    assert any("NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC" in note for note in out.notes)


def test_under_mig_each_gpu_instance_is_read_on_its_own():
    collector, _, clock = make(mig_instances=(1, 2, 5))
    tick(collector, clock)
    out = tick(collector, clock)
    assert out.errors == []
    assert set(values(out, "gputuned_gpu_sm_active_ratio")) == {("0", "1"), ("0", "2"), ("0", "5")}
    rx = values(out, "gputuned_gpu_nvlink_throughput_bytes_per_second")
    assert rx[("0", "2", "rx")] == pytest.approx(12_000 * MIB / 3)


def test_counters_held_by_another_profiler_step_the_collector_back_and_it_returns_later():
    collector, fake, clock = make(gpus=2)
    tick(collector, clock)
    fake.gpus[0].gpm_held = True
    out = tick(collector, clock)
    assert out.errors == []
    assert len(out.notes) == 1 and "held by another profiler" in out.notes[0] and out.notes[0].startswith("GPU 0")
    assert set(values(out, "gputuned_gpu_sm_active_ratio")) == {("1", "")}
    calls = fake.calls
    tick(collector, clock)  # stepped back: GPU 0 is not touched
    assert fake.calls - calls == 3
    fake.gpus[0].gpm_held = False
    clock.advance(60)
    assert set(values(tick(collector, clock), "gputuned_gpu_sm_active_ratio")) == {("1", "")}  # a fresh first sample
    assert set(values(tick(collector, clock), "gputuned_gpu_sm_active_ratio")) == {("0", ""), ("1", "")}


def test_nvml_vanishing_fails_the_tick_and_a_reopened_library_starts_afresh():
    collector, fake, clock = make()
    tick(collector, clock)
    fake.vanish()
    out = tick(collector, clock)
    assert out.errors and out.samples == []
    fake.restore()
    clock.advance(30)
    assert tick(collector, clock).samples == []  # new buffers: a first sample again
    assert "gputuned_gpu_sm_active_ratio" in names(tick(collector, clock))
