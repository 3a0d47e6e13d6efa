"""The numa collector on fixture trees: a 2-node host, a host without NUMA, this VM."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gputuned.collectors import numa
from gputuned.collectors.numa import NumaCollector
from gputuned.samples import WorkerTarget
from tests.conftest import host_root
from tests.helpers import names, values

HGX_BDFS = {
    i: bdf
    for i, bdf in enumerate(
        [
            "0000:18:00.0",
            "0000:2a:00.0",
            "0000:3a:00.0",
            "0000:5d:00.0",
            "0000:9a:00.0",
            "0000:ab:00.0",
            "0000:ba:00.0",
            "0000:db:00.0",
        ]
    )
}
PAGE = 4096


def dual_socket(gpus=HGX_BDFS) -> NumaCollector:
    proc, sys = host_root("dual-socket-8gpu")
    return NumaCollector(proc, sys, lambda: dict(gpus))


def test_system_wide_vmstat_counters():
    out = dual_socket().collect([WorkerTarget()])
    assert out.errors == [] and out.notes == []
    assert values(out, "gputuned_vmstat_numa_hint_faults_total") == {(): 198211092}
    assert values(out, "gputuned_vmstat_numa_hint_faults_local_total") == {(): 151022331}
    assert values(out, "gputuned_vmstat_numa_miss_total") == {(): 88722858}
    assert values(out, "gputuned_vmstat_pgmajfault_total") == {(): 88123}
    assert "gputuned_vmstat_nr_free_pages_total" not in names(out)


def test_per_node_numastat_memory_and_cpus():
    out = dual_socket().collect([WorkerTarget()])
    assert values(out, "gputuned_numa_hit_total") == {("0",): 2867164386, ("1",): 1904435512}
    assert values(out, "gputuned_numa_foreign_total") == {("0",): 88721654, ("1",): 1204}
    assert values(out, "gputuned_numa_other_node_total") == {("0",): 211497, ("1",): 88889046}
    assert values(out, "gputuned_numa_memory_total_bytes") == {("0",): 1056446492 * 1024, ("1",): 1056934648 * 1024}
    assert values(out, "gputuned_numa_node_cpus") == {("0",): 56, ("1",): 56}


def test_each_gpu_numa_node_from_sysfs():
    out = dual_socket().collect([WorkerTarget()])
    assert values(out, "gputuned_gpu_numa_node") == {(str(i),): (0 if i < 4 else 1) for i in range(8)}


def test_worker_faults_placement_and_off_node_share_relative_to_its_gpu():
    out = dual_socket().collect([WorkerTarget(pid=4242, gpu=0)])
    assert out.errors == []
    assert values(out, "gputuned_worker_page_faults_total") == {("worker", "minor"): 1873301, ("worker", "major"): 2210}
    node0 = (212 + 650 + 150000 + 262144 + 9120 + 33) * PAGE
    node1 = 51 * PAGE + 31234 * PAGE + 12 * 2048 * 1024
    assert values(out, "gputuned_worker_numa_resident_bytes") == {("worker", "0"): node0, ("worker", "1"): node1}
    assert values(out, "gputuned_worker_home_node") == {("worker",): 0}
    assert values(out, "gputuned_worker_offnode_ratio")[("worker",)] == pytest.approx(node1 / (node0 + node1))


def test_each_worker_is_measured_against_its_own_gpus_node():
    out = dual_socket().collect([WorkerTarget(pid=4242, gpu=0, name="gpu0"), WorkerTarget(pid=4242, gpu=5, name="gpu5")])
    assert values(out, "gputuned_worker_home_node") == {("gpu0",): 0, ("gpu5",): 1}
    offnode = values(out, "gputuned_worker_offnode_ratio")
    assert offnode[("gpu0",)] < 0.5 < offnode[("gpu5",)]
    assert set(values(out, "gputuned_worker_page_faults_total")) == {(w, k) for w in ("gpu0", "gpu5") for k in ("minor", "major")}


def test_a_worker_on_a_gpu_of_the_other_socket_has_most_pages_off_node():
    out = dual_socket().collect([WorkerTarget(pid=4242, gpu=5)])
    assert values(out, "gputuned_worker_home_node") == {("worker",): 1}
    assert values(out, "gputuned_worker_offnode_ratio")[("worker",)] > 0.9


def test_a_cpu_worker_is_measured_against_the_node_its_cpus_are_confined_to():
    out = dual_socket(gpus={}).collect([WorkerTarget(pid=4242, gpu=None)])
    assert values(out, "gputuned_worker_home_node") == {("worker",): 0}  # Cpus_allowed_list 0-27,56-83 is node 0
    assert "gputuned_gpu_numa_node" not in names(out)


def test_a_gpu_whose_node_the_platform_does_not_say_falls_back_to_the_workers_cpus():
    out = dual_socket({0: "0000:ff:00.0"}).collect([WorkerTarget(pid=4242, gpu=0)])  # no such device in sysfs: -1
    assert values(out, "gputuned_gpu_numa_node") == {("0",): -1}
    assert values(out, "gputuned_worker_home_node") == {("worker",): 0}  # Cpus_allowed_list 0-27,56-83 is node 0


def test_host_without_numa_notes_it_and_still_reports_what_it_has():
    proc, sys = host_root("no-numa")
    out = NumaCollector(proc, sys, lambda: {0: "0000:18:00.0"}).collect([WorkerTarget(pid=4242, gpu=0)])
    assert out.errors == []
    assert any("without NUMA" in note for note in out.notes)
    assert any("devices/system/node is absent" in note for note in out.notes)
    assert values(out, "gputuned_vmstat_pgfault_total") == {(): 9213409812}
    assert "gputuned_numa_hit_total" not in names(out)
    assert values(out, "gputuned_gpu_numa_node") == {("0",): -1}
    assert values(out, "gputuned_worker_page_faults_total")[("worker", "minor")] == 1873301
    assert "gputuned_worker_offnode_ratio" not in names(out)


def test_single_node_vm_copied_from_a_real_host():
    proc, sys = host_root("single-node-vm")
    out = NumaCollector(proc, sys, dict).collect([WorkerTarget(pid=4242)])
    assert out.errors == []
    assert set(values(out, "gputuned_numa_hit_total")) == {("0",)}
    assert values(out, "gputuned_worker_home_node") == {("worker",): 0}
    assert values(out, "gputuned_worker_offnode_ratio") == {("worker",): 0.0}


def test_a_vanished_worker_is_a_note_not_an_error():
    out = dual_socket().collect([WorkerTarget(pid=999999, gpu=0)])
    assert out.errors == []
    assert "worker pid 999999 is gone" in out.notes
    assert "gputuned_worker_page_faults_total" not in names(out)


def test_missing_vmstat_is_an_error_that_names_the_file(tmp_path):
    proc, sys = host_root("dual-socket-8gpu")
    shutil.copytree(proc, tmp_path / "proc")
    os.remove(tmp_path / "proc" / "vmstat")
    out = NumaCollector(tmp_path / "proc", sys, dict).collect([WorkerTarget()])
    assert out.errors == [f"cannot read {tmp_path}/proc/vmstat: No such file or directory"]
    assert "gputuned_numa_hit_total" in names(out)  # the per-node part still flows


def test_truncated_stat_file_is_an_error_not_a_crash(tmp_path):
    proc, sys = host_root("dual-socket-8gpu")
    shutil.copytree(proc, tmp_path / "proc")
    (tmp_path / "proc" / "4242" / "stat").write_text("4242 (python3) S 1")
    out = NumaCollector(tmp_path / "proc", sys, dict).collect([WorkerTarget(pid=4242)])
    assert len(out.errors) == 1 and "expected at least 12" in out.errors[0]


def test_the_real_host_reads_without_errors():
    out = NumaCollector(Path("/proc"), Path("/sys"), dict).collect([WorkerTarget(pid=os.getpid())])
    assert out.errors == []
    assert values(out, "gputuned_worker_page_faults_total")[("worker", "minor")] > 0


def test_an_unreadable_numastat_fails_that_node_only_and_names_the_file(tmp_path):
    proc, sys = host_root("dual-socket-8gpu")
    shutil.copytree(sys, tmp_path / "sys", symlinks=True)
    numastat = tmp_path / "sys" / "devices" / "system" / "node" / "node1" / "numastat"
    numastat.unlink()
    numastat.mkdir()  # reading it fails (EISDIR) as an unreadable file would, even for root
    out = NumaCollector(proc, tmp_path / "sys", dict).collect([WorkerTarget()])
    assert len(out.errors) == 1 and str(numastat) in out.errors[0]
    assert values(out, "gputuned_numa_hit_total").keys() == {("0",)}
    assert "gputuned_vmstat_numa_hit_total" in names(out)


def test_a_worker_that_exits_between_reading_its_stat_and_its_numa_maps_is_a_note(tmp_path, monkeypatch):
    proc, sys = host_root("dual-socket-8gpu")
    shutil.copytree(proc, tmp_path / "proc")
    real_read = numa.read_text

    def read_then_exit(root: Path, *parts: str | int) -> str:
        text = real_read(root, *parts)
        if parts[-1] == "stat" and len(parts) == 2:  # the worker exits right after its stat was read
            shutil.rmtree(tmp_path / "proc" / str(parts[0]))
        return text

    monkeypatch.setattr(numa, "read_text", read_then_exit)
    out = NumaCollector(tmp_path / "proc", sys, dict).collect([WorkerTarget(pid=4242, gpu=0)])
    assert out.errors == []
    assert "worker pid 4242 is gone" in out.notes
