"""The /proc and /sys parsers, on text copied from real files."""

from __future__ import annotations

import pytest

from gputuned.procfs import (
    ParseError,
    nvml_bus_id_to_sysfs,
    parse_cgroup_pod_uid,
    parse_cpulist,
    parse_int_file,
    parse_key_value_counters,
    parse_node_meminfo,
    parse_numa_maps,
    parse_pod_log_dir,
    parse_proc_stat,
    parse_status_field,
)

VMSTAT = """nr_free_pages 1168943
numa_hit 1068554
numa_miss 0
numa_foreign 0
numa_interleave 1128
pgfault 1122168
pgmajfault 698
"""


def test_key_value_counters_reads_every_counter():
    values = parse_key_value_counters(VMSTAT)
    assert values == {
        "nr_free_pages": 1168943,
        "numa_hit": 1068554,
        "numa_miss": 0,
        "numa_foreign": 0,
        "numa_interleave": 1128,
        "pgfault": 1122168,
        "pgmajfault": 698,
    }


def test_key_value_counters_skips_a_truncated_or_garbled_line_but_keeps_the_rest():
    values = parse_key_value_counters("numa_hit 10\nnuma_miss\nnuma_foreign x\npgfault 7\npgmaj")
    assert values == {"numa_hit": 10, "pgfault": 7}


def test_node_meminfo_converts_kb_to_bytes_and_keeps_plain_counts():
    text = "Node 1 MemTotal:       1056934648 kB\nNode 1 MemFree:        803554416 kB\nNode 1 HugePages_Total:     4\n"
    assert parse_node_meminfo(text) == {
        "MemTotal": 1056934648 * 1024,
        "MemFree": 803554416 * 1024,
        "HugePages_Total": 4,
    }


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0-3,8,10-11\n", [0, 1, 2, 3, 8, 10, 11]), ("5", [5]), ("\n", []), ("0-1", [0, 1])],
)
def test_cpulist(text, cpus):
    assert parse_cpulist(text) == cpus


def test_cpulist_rejects_garbage():
    with pytest.raises(ParseError, match="bad cpulist element"):
        parse_cpulist("0-x")


def test_proc_stat_handles_spaces_and_parens_in_the_command_name():
    text = "4242 (python3 (w) x) S 4200 4242 4200 0 -1 4194560 1873301 0 2210 0 51234 8812 0 0 20 0 57 0"
    stat = parse_proc_stat(text)
    assert stat.comm == "python3 (w) x"
    assert stat.state == "S"
    assert (stat.minor_faults, stat.major_faults) == (1873301, 2210)


def test_proc_stat_rejects_truncated_text():
    with pytest.raises(ParseError, match="expected at least 12"):
        parse_proc_stat("4242 (python3) S 4200 4242")


def test_numa_maps_sums_pages_per_node_in_each_mapping_page_size():
    text = (
        "5617e5b3f000 default heap anon=10 dirty=10 N0=6 N1=4 kernelpagesize_kB=4\n"
        "7f2a40000000 default anon=2 dirty=2 N1=2 kernelpagesize_kB=2048\n"
        "7f2c9b000000 default\n"
        "7ffd2c8e1000 default stack anon=3 dirty=3 N0=3 kernelpagesize_kB=4\n"
    )
    assert parse_numa_maps(text) == {0: 9 * 4096, 1: 4 * 4096 + 2 * 2048 * 1024}


def test_status_field():
    text = "Name:\tpython3\nCpus_allowed_list:\t0-27,56-83\nMems_allowed_list:\t0-1\n"
    assert parse_status_field(text, "Cpus_allowed_list") == "0-27,56-83"
    assert parse_status_field(text, "Missing") is None


def test_int_file():
    assert parse_int_file("-1\n") == -1
    with pytest.raises(ParseError):
        parse_int_file("node0\n")


@pytest.mark.parametrize(
    ("nvml", "sysfs"),
    [("00000000:3B:00.0", "0000:3b:00.0"), ("00000001:DB:00.0", "0001:db:00.0"), ("0000:18:00.0", "0000:18:00.0")],
)
def test_nvml_bus_id_to_sysfs(nvml, sysfs):
    assert nvml_bus_id_to_sysfs(nvml) == sysfs


def test_nvml_bus_id_rejects_garbage():
    with pytest.raises(ParseError):
        nvml_bus_id_to_sysfs("GPU-1234")


POD_UID = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"


@pytest.mark.parametrize(
    ("text", "uid"),
    [
        # cgroup v2, systemd driver (containerd): the UID's dashes are underscores in the slice name
        (
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_4e5f_6071_8293_a4b5c6d7e8f9.slice/"
            "cri-containerd-5d1f0e6f8c4b3a29.scope\n",
            POD_UID,
        ),
        # cgroup v1, cgroupfs driver: one line per hierarchy, the UID as it is
        (
            "12:memory:/kubepods/besteffort/pod0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9/5d1f0e6f8c4b3a29\n"
            "11:cpu,cpuacct:/kubepods/besteffort/pod0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9/5d1f0e6f8c4b3a29\n",
            POD_UID,
        ),
        (
            "0::/kubepods.slice/kubepods-pod0a1b2c3d_4e5f_6071_8293_a4b5c6d7e8f9.slice/crio-5d1f.scope\n",
            POD_UID,
        ),  # guaranteed QoS
        ("0::/system.slice/gputuned.service\n", None),  # a host process
        ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
        ("", None),
    ],
)
def test_the_pod_uid_of_a_process_from_its_cgroup(text, uid):
    assert parse_cgroup_pod_uid(text) == uid


def test_pod_log_directories_name_namespace_pod_and_uid():
    assert parse_pod_log_dir(f"serving_resnet-7f9c-0_{POD_UID}") == (POD_UID, "serving", "resnet-7f9c-0")
    assert parse_pod_log_dir("lost+found") is None
    assert parse_pod_log_dir("a_b") is None and parse_pod_log_dir("a__c") is None
