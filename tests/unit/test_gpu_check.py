"""The GPU check's judgements (gputuned/testing/gpu_check.py) on data as the real sources give it."""

from __future__ import annotations

import pytest

from gputuned.samples import WorkerTarget
from gputuned.testing.fake_nvml import FakeNvml
from gputuned.testing.gpu_check import (
    PER_GPU_FAMILIES,
    SMI_QUERY,
    SOURCES,
    SmiError,
    compare,
    copy_agreement,
    disagreements,
    energy_agreement,
    gpm_verdict,
    implausible,
    missing_families,
    oom_verdict,
    parse_smi_csv,
    per_gpu,
    refused_readings,
)
from gputuned.tuners.batch import BatchTuner
from tests.helpers import ManualClock, values
from tests.unit.test_guard import SimulatedWorker, make, run
from tests.unit.test_nvml_collector import make as make_collector

# nvidia-smi 580 on an H200, --format=csv,noheader,nounits (a field it lacks reads [N/A]).
SMI = "0, 4, 143771, 77.41, 31, 345, 1, 16\n100, 70000, 143771, [N/A], 62, 1980, 5, 16\n"
METRICS = """# TYPE gputuned_gpu_utilization_ratio gauge
gputuned_gpu_utilization_ratio{gpu="0"} 0.0
gputuned_gpu_utilization_ratio{gpu="1"} 0.97
# TYPE gputuned_gpu_memory_used_bytes gauge
gputuned_gpu_memory_used_bytes{gpu="0"} 4194304
gputuned_gpu_memory_used_bytes{gpu="1"} 73400320000
# TYPE gputuned_gpu_memory_total_bytes gauge
gputuned_gpu_memory_total_bytes{gpu="0"} 150754820096
gputuned_gpu_memory_total_bytes{gpu="1"} 150754820096
# TYPE gputuned_gpu_power_watts gauge
gputuned_gpu_power_watts{gpu="0"} 78.0
gputuned_gpu_power_watts{gpu="1"} 650.0
# TYPE gputuned_gpu_temperature_celsius gauge
gputuned_gpu_temperature_celsius{gpu="0"} 31
gputuned_gpu_temperature_celsius{gpu="1"} 63
# TYPE gputuned_gpu_sm_clock_hertz gauge
gputuned_gpu_sm_clock_hertz{gpu="0"} 345000000
gputuned_gpu_sm_clock_hertz{gpu="1"} 1500000000
# TYPE gputuned_pcie_link_generation gauge
gputuned_pcie_link_generation{gpu="0"} 1
gputuned_pcie_link_generation{gpu="1"} 5
# TYPE gputuned_pcie_link_width gauge
gputuned_pcie_link_width{gpu="0"} 16
gputuned_pcie_link_width{gpu="1"} 16
"""


def test_nvidia_smi_csv_is_read_with_fields_it_lacks_as_none():
    rows = parse_smi_csv(SMI)
    assert len(SMI_QUERY.split(",")) == 8 and len(rows) == 2
    assert rows[0]["memory.total"] == 143771 and rows[1]["power.draw"] is None
    with pytest.raises(SmiError, match="line 1: 2 values for 8 fields"):
        parse_smi_csv("1, 2\n")
    with pytest.raises(SmiError, match=r"line 1: temperature\.gpu is 'hot'"):
        parse_smi_csv("0, 4, 143771, 77.41, hot, 345, 1, 16")


def test_each_field_agrees_within_its_tolerance_and_a_clock_far_off_is_named():
    agreements = compare(per_gpu(METRICS), parse_smi_csv(SMI))
    wrong = [(a.gpu, a.field) for a in agreements if not a.agrees]
    assert wrong == [("1", "clocks.sm")], agreements  # 1500 MHz read against nvidia-smi's 1980
    power = next(a for a in agreements if a.gpu == "1" and a.field == "power.draw")
    assert power.agrees and power.smi is None  # nvidia-smi had no reading: nothing to compare
    clock = next(a for a in agreements if a.gpu == "1" and a.field == "clocks.sm")
    assert "1500.0 against nvidia-smi's 1980.0 (allowed +-297.0)" in clock.why


def test_a_volatile_field_may_differ_once_a_steady_one_never():
    smi = parse_smi_csv(SMI)
    good = compare(per_gpu(METRICS.replace("1500000000", "1980000000")), smi)
    off_clock = compare(per_gpu(METRICS), smi)
    off_total = compare(per_gpu(METRICS.replace('total_bytes{gpu="0"} 150754820096', 'total_bytes{gpu="0"} 1')), smi)
    assert disagreements([good, off_clock, good]) == []
    assert disagreements([off_clock, off_clock, good]) == [
        "GPU 1 clocks.sm: 1500.0 against nvidia-smi's 1980.0 (allowed +-297.0) in 2 of 3 reads"
    ]
    assert [p.split(":")[0] for p in disagreements([good, off_total, good])] == ["GPU 0 memory.total"]


def test_a_missing_family_fails_unless_the_daemon_logged_the_driver_refusing_it():
    fake = FakeNvml.with_gpus(1)
    fake.gpus[0].unsupported.add("nvmlDeviceGetTotalEnergyConsumption")
    collected = make_collector(fake)[0].collect([])
    text = "".join(
        f'# TYPE {s.spec.name} gauge\n{s.spec.name}{{gpu="{s.labels[0]}"}} {s.value}\n'
        for s in collected.samples
        if s.spec.labels == ("gpu",)
    )
    daemon = per_gpu(text)
    missing = [entry.split(" for")[0] for entry in missing_families(daemon, ["0"], refused=set())]
    assert "gputuned_gpu_energy_joules_total" in missing and "gputuned_gpu_power_watts" not in missing
    log = f"2026-11-29 12:00:00,000 INFO gputuned.sampler: collector nvml: {collected.notes[0]}\n"  # as the sampler logs it
    assert refused_readings(log) == {("0", "nvmlDeviceGetTotalEnergyConsumption")}
    assert "gputuned_gpu_energy_joules_total" not in " ".join(missing_families(daemon, ["0"], refused_readings(log)))
    warning = log.replace(" INFO ", " WARNING ")  # a reading that failed is an error, not a refusal
    assert refused_readings(warning) == set()


def test_implausible_values_are_named():
    daemon = per_gpu(
        METRICS.replace('ratio{gpu="1"} 0.97', 'ratio{gpu="1"} 97').replace(
            'used_bytes{gpu="0"} 4194304', 'used_bytes{gpu="0"} 2e12'
        )
    )
    assert implausible(daemon) == [
        "GPU 1 gputuned_gpu_utilization_ratio = 97, outside 0..1",
        "GPU 0 uses 2e+12 bytes of 1.50755e+11",
    ]
    assert implausible(per_gpu(METRICS)) == []


def test_the_pcie_counter_may_carry_more_than_the_worker_copied_not_less():
    assert copy_agreement(1e9, 1.04e9, 10)[1] is None
    ratio, problem = copy_agreement(1e9, 0.2e9, 10)
    assert ratio == pytest.approx(0.2) and "grew 200.0 MB in 10 s, less than the 1000.0 MB the worker copied" in problem
    assert "no host-to-device bytes" in copy_agreement(0, 5e6, 10)[1]


def test_the_oom_verdict_reads_the_guards_own_decisions():
    worker = SimulatedWorker(noise=0.0)
    worker.knobs["max_batch_size"] = 8
    worker.oom_above = 8  # the climb's next step, 16, runs out of memory
    guard, decisions = make(worker, tuners=[BatchTuner()])
    run(guard, 30)
    as_logged = [decision.to_json() for decision in decisions]  # as decisions.jsonl holds them
    assert oom_verdict(as_logged, guard.view().ceilings, batch_before=8) is None
    assert "no ceiling below max_batch_size=16" in oom_verdict(as_logged, {}, batch_before=8)
    assert "not back to 4" in oom_verdict(as_logged, guard.view().ceilings, batch_before=4)
    clean = SimulatedWorker(noise=0.0)
    guard, decisions = make(clean, tuners=[BatchTuner()])
    run(guard, 30)
    assert "no max_batch_size revert for out-of-memory events" in oom_verdict([d.to_json() for d in decisions], {}, 1)


def test_every_per_gpu_family_names_the_nvml_readings_behind_it():
    assert set(SOURCES) == set(PER_GPU_FAMILIES)
    fake_functions = {name for name in dir(FakeNvml) if name.startswith("nvmlDevice")}
    assert {function for functions in SOURCES.values() for function in functions} <= fake_functions


IDLE = {
    "gputuned_gpu_sm_active_ratio": 0.0,
    "gputuned_gpu_sm_occupancy_ratio": 0.0,
    "gputuned_gpu_tensor_active_ratio": 0.0,
    "gputuned_gpu_dram_bandwidth_utilization_ratio": 0.01,
    "gputuned_gpu_utilization_ratio": 0.0,
}
LOADED = {
    "gputuned_gpu_sm_active_ratio": 0.82,
    "gputuned_gpu_sm_occupancy_ratio": 0.35,
    "gputuned_gpu_tensor_active_ratio": 0.41,
    "gputuned_gpu_dram_bandwidth_utilization_ratio": 0.47,
    "gputuned_gpu_utilization_ratio": 0.97,
}


def test_gpm_figures_of_a_gpu_at_rest_and_under_resnet50():
    assert gpm_verdict(IDLE, LOADED) == []
    busy_at_rest = gpm_verdict({**IDLE, "gputuned_gpu_sm_active_ratio": 0.2, "gputuned_gpu_utilization_ratio": 0.2}, LOADED)
    assert busy_at_rest == ["idle: SMs 20% active (an idle GPU: under 5%)"]
    # A percent read as a ratio, and SMs busier than the time any kernel ran: a unit slip.
    slipped = gpm_verdict(IDLE, {**LOADED, "gputuned_gpu_sm_active_ratio": 82.0})
    assert "loaded: gputuned_gpu_sm_active_ratio = 82, outside 0..1" in slipped
    assert any("while a kernel ran only 97%" in problem for problem in slipped)
    flat = gpm_verdict(IDLE, {**LOADED, "gputuned_gpu_tensor_active_ratio": 0.0})
    assert flat == ["gputuned_gpu_tensor_active_ratio did not rise under load: 0.000 idle, 0.000 loaded"]
    assert gpm_verdict(IDLE, {k: v for k, v in LOADED.items() if "occupancy" not in k}) == [
        "loaded: no gputuned_gpu_sm_occupancy_ratio"
    ]
    weak = gpm_verdict(IDLE, {**LOADED, "gputuned_gpu_sm_active_ratio": 0.1})
    assert weak == ["loaded: SMs only 10% active under ResNet-50 (at least 30%)"]


def test_the_energy_charged_to_a_worker_against_power_over_time():
    power = [(float(t), 300.0) for t in range(21)]  # 300 W for 20 s: 6 kJ
    ratio, problems = energy_agreement(5900.0, 6100.0, power)
    assert problems == [] and ratio == pytest.approx(5900 / 6000)
    _, short = energy_agreement(3000.0, 6000.0, power)  # half the board's energy: another process took a share
    assert short == ["the worker's energy grew 3000 J where power x time is 6000 J"]
    _, counter = energy_agreement(6000.0, 9000.0, power)
    assert counter == ["the GPU's energy counter grew 9000 J where power x time is 6000 J"]
    assert energy_agreement(1.0, 1.0, power[:1])[1] == ["fewer than two power readings over the window"]


def test_the_energy_check_agrees_with_the_fake_nvml_through_the_collector():
    # The fake GPU draws a steady 312 W, its counter grows by as much: the judgement passes on it.
    clock = ManualClock()
    fake = FakeNvml(FakeNvml.with_gpus(1).gpus, clock=clock)
    fake.gpus[0].processes[4242] = 1024
    collector, _ = make_collector(fake, clock)
    readings, power = [], []
    for _ in range(21):
        out = collector.collect([WorkerTarget(pid=4242, gpu=0, name="w")])
        readings.append(
            (
                values(out, "gputuned_worker_energy_joules_total")[("w", "0")],
                values(out, "gputuned_gpu_energy_joules_total")[("0",)],
            )
        )
        power.append((clock.now, values(out, "gputuned_gpu_power_watts")[("0",)]))
        clock.advance(1.0)
    ratio, problems = energy_agreement(readings[-1][0] - readings[0][0], readings[-1][1] - readings[0][1], power)
    assert problems == [] and ratio == pytest.approx(1.0)
