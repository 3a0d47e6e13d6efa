"""The GPU check's judgements (gputuned/testing/gpu_check.py) on data as the real sources give it."""

from __future__ import annotations

import pytest

from gputuned.testing.fake_nvml import FakeNvml
from gputuned.testing.gpu_check import (
    PER_GPU_FAMILIES,
    SMI_QUERY,
    SOURCES,
    SmiError,
    compare,
    copy_agreement,
    disagreements,
    implausible,
    missing_families,
    oom_verdict,
    parse_smi_csv,
    per_gpu,
    refused_readings,
)
from gputuned.tuners.batch import BatchTuner
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
