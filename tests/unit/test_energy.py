"""Energy per worker: the split rules (pure), and the nvml collector charging each worker its
share of its GPU's energy counter on the fake NVML."""

from __future__ import annotations

from pathlib import Path

import pytest

from gputuned.collectors.energy import EnergyLedger, Split, split
from gputuned.collectors.nvml import NvmlCollector
from gputuned.collectors.nvml_session import NvmlSession
from gputuned.samples import WorkerTarget
from gputuned.testing.fake_nvml import FakeNvml
from tests.conftest import host_root
from tests.helpers import ManualClock, values

_, DUAL_SOCKET_SYS = host_root("dual-socket-8gpu")
WATTS = 312.0  # the fake GPU's draw


def test_an_idle_gpu_and_a_gpu_under_mig_stay_unattributed():
    assert split((), None, {}, mig=False) == Split(unattributed={"idle": 1.0})
    assert split({1, 2}, {1: 50.0}, {1: "w"}, mig=True) == Split(unattributed={"mig": 1.0})


def test_processes_that_ran_share_by_their_utilisation_and_strangers_stay_unattributed():
    shares = split({10, 11, 12}, {10: 60.0, 11: 20.0, 12: 20.0}, {10: "a", 11: "a"}, mig=False)
    assert shares.workers == {"a": pytest.approx(0.8)}
    assert shares.unattributed == {"other_processes": pytest.approx(0.2)}


def test_resident_processes_without_samples_share_evenly():
    for utilization in (None, {}, {10: 0.0}):
        shares = split({10, 11}, utilization, {10: "a"}, mig=False)
        assert shares.workers == {"a": 0.5} and shares.unattributed == {"other_processes": 0.5}


def test_the_ledger_starts_at_the_first_reading_and_skips_a_counter_that_went_back():
    ledger = EnergyLedger()
    ledger.record("0", 1000.0, Split({"a": 1.0}))
    assert ledger.workers == {("a", "0"): 0.0}
    ledger.record("0", 1300.0, Split({"a": 0.5}, {"idle": 0.5}))
    ledger.record("0", 10.0, Split({"a": 1.0}))  # the driver was reloaded
    ledger.record("0", 110.0, Split({"a": 1.0}))
    assert ledger.workers == {("a", "0"): 250.0}
    assert ledger.unattributed == {("0", "idle"): 150.0, ("0", "other_processes"): 0.0, ("0", "mig"): 0.0}


def make(proc_root: Path, **gpu_fields: object) -> tuple[NvmlCollector, FakeNvml, ManualClock]:
    clock = ManualClock()
    fake = FakeNvml(FakeNvml.with_gpus(2, **gpu_fields).gpus, clock=clock)
    session = NvmlSession(fake, DUAL_SOCKET_SYS, clock=clock)
    return NvmlCollector(session, fake, proc_root), fake, clock


def energy_after(collector: NvmlCollector, clock: ManualClock, targets: list[WorkerTarget], ticks: int = 10):
    out = None
    for _ in range(ticks):
        clock.advance(1.0)
        out = collector.collect(targets)
    assert out is not None
    return values(out, "gputuned_worker_energy_joules_total"), values(out, "gputuned_gpu_unattributed_energy_joules_total")


def write_process(proc_root: Path, pid: int, parent: int) -> None:
    (proc_root / str(pid)).mkdir(parents=True)
    (proc_root / str(pid) / "status").write_text(f"Name:\tpython\nPid:\t{pid}\nPPid:\t{parent}\n")


def test_every_joule_of_a_gpu_lands_with_a_worker_or_a_reason(tmp_path):
    collector, fake, clock = make(tmp_path)
    fake.gpus[0].processes.update({4242: 1024, 777: 1024})
    fake.gpus[0].process_sm_util_by_pid = {4242: 75, 777: 25}
    workers, unattributed = energy_after(collector, clock, [WorkerTarget(pid=4242, gpu=0, name="bert")])
    assert workers == {("bert", "0"): pytest.approx(9 * WATTS * 0.75)}  # 9 intervals after the first reading
    assert unattributed[("0", "other_processes")] == pytest.approx(9 * WATTS * 0.25)
    assert unattributed[("1", "idle")] == pytest.approx(9 * WATTS)  # nothing runs on GPU 1
    assert sum(workers.values()) + sum(unattributed.values()) == pytest.approx(2 * 9 * WATTS)


def test_a_worker_is_charged_for_the_gpu_processes_it_started(tmp_path):
    # vLLM's engine core and Triton's backend stubs run on the GPU as the worker's children.
    write_process(tmp_path, 5001, 5000)
    write_process(tmp_path, 5002, 5001)
    write_process(tmp_path, 6001, 1)
    collector, fake, clock = make(tmp_path)
    fake.gpus[0].processes.update({5002: 8 * 2**30, 6001: 2**30})
    fake.gpus[0].process_sm_util_by_pid = {5002: 90, 6001: 10}
    targets = [WorkerTarget(pid=5000, gpu=0, name="vllm")]
    workers, _ = energy_after(collector, clock, targets)
    assert workers[("vllm", "0")] == pytest.approx(9 * WATTS * 0.9)
    clock.advance(1.0)
    out = collector.collect(targets)
    assert values(out, "gputuned_worker_gpu_memory_used_bytes") == {("vllm", "0"): 8 * 2**30}
    assert values(out, "gputuned_worker_gpu_utilization_ratio") == {("vllm", "0"): 0.9}


def test_two_workers_on_one_gpu_split_its_energy_by_their_utilisation(tmp_path):
    collector, fake, clock = make(tmp_path)
    fake.gpus[1].processes.update({100: 1024, 200: 1024})
    fake.gpus[1].process_sm_util_by_pid = {100: 30, 200: 10}
    targets = [WorkerTarget(pid=100, gpu=1, name="a"), WorkerTarget(pid=200, gpu=1, name="b")]
    workers, _ = energy_after(collector, clock, targets)
    assert workers[("a", "1")] == pytest.approx(3 * workers[("b", "1")])
    assert workers[("a", "1")] + workers[("b", "1")] == pytest.approx(9 * WATTS)


def test_without_per_process_samples_resident_processes_share_evenly(tmp_path):
    collector, fake, clock = make(tmp_path, unsupported={"nvmlDeviceGetProcessUtilization"})
    fake.gpus[0].processes.update({100: 1024, 300: 1024})
    workers, unattributed = energy_after(collector, clock, [WorkerTarget(pid=100, gpu=0, name="a")])
    assert workers[("a", "0")] == pytest.approx(9 * WATTS / 2)
    assert unattributed[("0", "other_processes")] == pytest.approx(9 * WATTS / 2)


def test_under_mig_the_board_energy_stays_unattributed(tmp_path):
    collector, fake, clock = make(tmp_path, mig_instances=(1, 2))
    fake.gpus[0].processes.update({100: 1024})
    workers, unattributed = energy_after(collector, clock, [WorkerTarget(pid=100, gpu=0, name="a")])
    assert workers.get(("a", "0"), 0.0) == 0.0
    assert unattributed[("0", "mig")] == pytest.approx(9 * WATTS)
