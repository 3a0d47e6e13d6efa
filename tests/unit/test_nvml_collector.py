"""The nvml collector on the fake NVML: 1 and 8 GPUs, unsupported fields, faults mid-run."""

from __future__ import annotations

import pynvml
import pytest

from gputuned.collectors.nvml import NvmlCollector
from gputuned.collectors.nvml_session import NvmlSession
from gputuned.samples import WorkerTarget
from gputuned.testing.fake_nvml import FakeNvml
from tests.conftest import host_root
from tests.helpers import ManualClock, names, values

DUAL_SOCKET_PROC, DUAL_SOCKET_SYS = host_root("dual-socket-8gpu")


def make(fake: FakeNvml, clock=None) -> tuple[NvmlCollector, NvmlSession]:
    session = NvmlSession(fake, DUAL_SOCKET_SYS, retry_seconds=30, clock=clock or ManualClock())
    return NvmlCollector(session, fake, DUAL_SOCKET_PROC), session


def test_one_gpu_reports_every_reading_in_base_units():
    fake = FakeNvml.with_gpus(1)
    collector, _ = make(fake)
    out = collector.collect([WorkerTarget()])
    assert out.errors == [] and out.notes == []
    assert values(out, "gputuned_gpu_info") == {
        ("0", "GPU-00000000-0000-0000-0000-000000000000", "NVIDIA H100 80GB HBM3", "00000000:18:00.0", "550.54.15", "0"): 1.0
    }
    assert values(out, "gputuned_gpu_utilization_ratio") == {("0",): 0.87}
    assert values(out, "gputuned_gpu_memory_utilization_ratio") == {("0",): 0.41}
    assert values(out, "gputuned_gpu_memory_total_bytes") == {("0",): 80 * 1024**3}
    assert values(out, "gputuned_gpu_memory_used_bytes") == {("0",): 20 * 1024**3}
    assert values(out, "gputuned_gpu_memory_reserved_bytes") == {("0",): 512 * 1024**2}
    assert values(out, "gputuned_gpu_power_watts") == {("0",): 312.0}
    assert values(out, "gputuned_gpu_temperature_celsius") == {("0",): 61.0}
    assert values(out, "gputuned_gpu_sm_clock_hertz") == {("0",): 1755e6}
    assert values(out, "gputuned_gpu_memory_clock_hertz") == {("0",): 2619e6}
    reasons = values(out, "gputuned_gpu_clock_event_active")
    assert reasons[("0", "sw_power_cap")] == 1.0
    assert sum(reasons.values()) == 1.0 and len(reasons) == 9
    assert values(out, "gputuned_gpu_ecc_errors_total") == {("0", "corrected"): 3.0, ("0", "uncorrected"): 0.0}
    assert values(out, "gputuned_gpu_energy_joules_total")[("0",)] >= 1_000_000


def test_eight_gpus_each_with_its_numa_node_from_sysfs():
    collector, _ = make(FakeNvml.with_gpus(8))
    out = collector.collect([WorkerTarget()])
    info = values(out, "gputuned_gpu_info")
    assert len(info) == 8
    nodes = {labels[0]: labels[5] for labels in info}
    assert nodes == {"0": "0", "1": "0", "2": "0", "3": "0", "4": "1", "5": "1", "6": "1", "7": "1"}
    assert len(values(out, "gputuned_gpu_power_watts")) == 8


def test_energy_counter_grows_with_time():
    clock = ManualClock()
    fake = FakeNvml(FakeNvml.with_gpus(1).gpus, clock=clock)
    collector, _ = make(fake)
    first = values(collector.collect([WorkerTarget()]), "gputuned_gpu_energy_joules_total")[("0",)]
    clock.advance(10)
    second = values(collector.collect([WorkerTarget()]), "gputuned_gpu_energy_joules_total")[("0",)]
    assert second - first == pytest.approx(3120.0)  # 312 W for 10 s


def test_an_unsupported_field_is_skipped_and_noted_and_not_asked_again():
    fake = FakeNvml.with_gpus(1)
    fake.gpus[0].unsupported.update({"nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetPowerUsage"})
    collector, _ = make(fake)
    out = collector.collect([WorkerTarget()])
    assert out.errors == []
    assert "gputuned_gpu_ecc_errors_total" not in names(out)
    assert "gputuned_gpu_power_watts" not in names(out)
    assert "gputuned_gpu_temperature_celsius" in names(out)
    assert any("nvmlDeviceGetPowerUsage" in note and "Not Supported" in note for note in out.notes)
    calls = fake.calls
    collector.collect([WorkerTarget()])
    calls_per_tick = fake.calls - calls
    fake.gpus[0].unsupported.clear()
    calls = fake.calls
    collector.collect([WorkerTarget()])
    assert fake.calls - calls == calls_per_tick  # the remembered unsupported fields stay skipped


def test_older_driver_without_memory_v2_or_clock_event_reasons_falls_back():
    fake = FakeNvml.with_gpus(1)
    original = fake.nvmlDeviceGetMemoryInfo

    def memory_info_v1_only(handle, version=None):
        if version:
            raise pynvml.NVMLError_FunctionNotFound()
        return original(handle)

    fake.nvmlDeviceGetMemoryInfo = memory_info_v1_only
    fake.gpus[0].unsupported.add("nvmlDeviceGetCurrentClocksEventReasons")
    collector, _ = make(fake)
    out = collector.collect([WorkerTarget()])
    assert out.errors == []
    assert values(out, "gputuned_gpu_memory_used_bytes") == {("0",): 20 * 1024**3}
    assert "gputuned_gpu_memory_reserved_bytes" not in names(out)
    assert values(out, "gputuned_gpu_clock_event_active")[("0", "sw_power_cap")] == 1.0


def test_a_gpu_lost_mid_run_fails_the_tick_but_the_other_gpus_keep_flowing():
    fake = FakeNvml.with_gpus(8)
    collector, _ = make(fake)
    assert collector.collect([WorkerTarget()]).errors == []
    fake.gpus[3].lost = True
    out = collector.collect([WorkerTarget()])
    assert len(out.errors) == 1 and "GPU 3" in out.errors[0] and "GPU is lost" in out.errors[0]
    gpus = {labels[0] for labels in values(out, "gputuned_gpu_power_watts")}
    assert gpus == {"0", "1", "2", "4", "5", "6", "7"}


def test_a_field_turning_unsupported_mid_run_drops_only_that_field():
    fake = FakeNvml.with_gpus(2)
    collector, _ = make(fake)
    collector.collect([WorkerTarget()])
    fake.gpus[1].unsupported.add("nvmlDeviceGetTemperature")
    out = collector.collect([WorkerTarget()])
    assert out.errors == []
    assert set(values(out, "gputuned_gpu_temperature_celsius")) == {("0",)}


def test_the_library_vanishing_fails_the_collector_then_it_recovers_after_the_retry_delay():
    clock = ManualClock()
    fake = FakeNvml.with_gpus(2)
    collector, _ = make(fake, clock)
    assert collector.collect([WorkerTarget()]).errors == []
    fake.vanish()
    out = collector.collect([WorkerTarget()])
    assert out.errors and "NVML unavailable" in out.errors[0]
    fake.restore()
    clock.advance(5)
    assert collector.collect([WorkerTarget()]).errors  # still within the retry delay
    clock.advance(30)
    out = collector.collect([WorkerTarget()])
    assert out.errors == []
    assert len(values(out, "gputuned_gpu_power_watts")) == 2


def test_no_driver_at_all_is_a_clear_failure():
    fake = FakeNvml.with_gpus(1)
    fake.vanish()
    collector, _ = make(fake)
    out = collector.collect([WorkerTarget()])
    assert out.samples == []
    assert out.errors == ["NVML unavailable: nvmlInit: NVML Shared Library Not Found"]


def test_xid_errors_are_counted_per_code_across_ticks():
    fake = FakeNvml.with_gpus(2)
    collector, _ = make(fake)
    assert values(collector.collect([WorkerTarget()]), "gputuned_gpu_xid_errors_total") == {}
    fake.gpus[1].pending_xids.extend([79, 48, 79])
    assert values(collector.collect([WorkerTarget()]), "gputuned_gpu_xid_errors_total") == {("1", "79"): 2.0, ("1", "48"): 1.0}
    fake.gpus[1].pending_xids.append(79)
    assert values(collector.collect([WorkerTarget()]), "gputuned_gpu_xid_errors_total")[("1", "79")] == 3.0


def test_the_worker_process_share_of_its_gpu():
    fake = FakeNvml.with_gpus(2)
    fake.gpus[1].processes.update({4242: 6 * 1024**3, 999: 1024})
    collector, _ = make(fake)
    out = collector.collect([WorkerTarget(pid=4242, gpu=1)])
    assert values(out, "gputuned_worker_gpu_memory_used_bytes") == {("worker", "1"): 6 * 1024**3}
    assert values(out, "gputuned_worker_gpu_utilization_ratio") == {("worker", "1"): 0.80}
    assert values(out, "gputuned_worker_gpu_memory_utilization_ratio") == {("worker", "1"): 0.35}
    # No worker: no per-process series.
    assert "gputuned_worker_gpu_memory_used_bytes" not in names(collector.collect([WorkerTarget()]))


def test_two_workers_sharing_a_gpu_each_get_their_own_share():
    fake = FakeNvml.with_gpus(2)
    fake.gpus[1].processes.update({4242: 6 * 1024**3, 999: 1024})
    collector, _ = make(fake)
    out = collector.collect([WorkerTarget(pid=4242, gpu=1, name="big"), WorkerTarget(pid=999, gpu=1, name="small")])
    assert values(out, "gputuned_worker_gpu_memory_used_bytes") == {("big", "1"): 6 * 1024**3, ("small", "1"): 1024}


def test_close_frees_the_event_sets():
    fake = FakeNvml.with_gpus(1)
    collector, session = make(fake)
    collector.collect([WorkerTarget()])
    collector.close()
    session.close()
    assert fake.initialized == 0
