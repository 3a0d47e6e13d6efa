"""Pod attribution against a stand-in kubelet serving the PodResources protocol over gRPC on a
real Unix socket: which pods hold which GPUs, which pods' processes use them (a time-sliced GPU
charged per pod, not copied), a pod that goes away, a socket nobody answers, no socket at all,
and the daemon exporting it all."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gputuned.collectors.kubelet import KubeletCollector
from gputuned.collectors.nvml_session import NvmlSession
from gputuned.collectors.podresources import DeviceHolder, ListPodResourcesResponse
from gputuned.testing.fake_kubelet import FakeKubelet, serving_kubelet
from gputuned.testing.fake_nvml import FakeNvml
from gputuned.testing.processes import http_get, running_daemon
from tests.conftest import host_root
from tests.helpers import ManualClock, values

_, SYS = host_root("dual-socket-8gpu")
GIB = 2**30
UID_A, UID_B, UID_C = (f"{n}a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9" for n in "012")


def uuid(index: int) -> str:
    return f"GPU-00000000-0000-0000-0000-{index:012d}"  # FakeNvml.with_gpus' UUIDs


HOLDERS = [
    DeviceHolder("serving", "resnet-0", "server", "nvidia.com/gpu", uuid(0)),
    DeviceHolder("serving", "resnet-0", "server", "nvidia.com/gpu", uuid(1)),
    # GPU 2 time-sliced: two pods hold a replica each
    DeviceHolder("batch", "bert-a", "main", "nvidia.com/gpu", f"{uuid(2)}::0"),
    DeviceHolder("batch", "bert-b", "main", "nvidia.com/gpu", f"{uuid(2)}::1"),
    DeviceHolder("batch", "bert-b", "main", "example.com/fpga", "fpga-0"),  # not a GPU
    DeviceHolder("serving", "mig-pod", "main", "nvidia.com/mig-1g.10gb", "MIG-5c0c8d1e"),
]


def cgroup(uid: str) -> str:
    return f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid.replace('-', '_')}.slice/cri-containerd-ab12.scope\n"


@pytest.fixture
def node(tmp_path: Path):
    """(socket path, pod log dir, proc root, fake NVML): processes 101 (resnet-0, on GPU 0),
    201 and 202 (bert-a and bert-b, on GPU 2) and 300 (a host process on GPU 2)."""
    proc, logs = tmp_path / "proc", tmp_path / "pods"
    for pid, text in ((101, cgroup(UID_A)), (201, cgroup(UID_B)), (202, cgroup(UID_C)), (300, "0::/system.slice/x.service\n")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(text)
    for name in (
        f"batch_bert-a_{UID_B}",
        f"batch_bert-b_{UID_C}",
        "kube-system_kube-proxy-x_99999999-0000-0000-0000-000000000000",
    ):
        (logs / name).mkdir(parents=True)  # resnet-0's directory is missing: it is found as GPU 0's only holder
    fake = FakeNvml.with_gpus(4)
    fake.gpus[0].processes = {101: 6 * GIB}
    fake.gpus[2].processes = {201: 3 * GIB, 202: 5 * GIB, 300: 1 * GIB}
    return tmp_path / "kubelet.sock", logs, proc, fake


def collector(node) -> KubeletCollector:
    socket, logs, proc, fake = node
    return KubeletCollector(socket, logs, proc, NvmlSession(fake, SYS, retry_seconds=30, clock=ManualClock()))


def test_pods_holding_and_using_each_gpu(node):
    gathering = collector(node)
    with serving_kubelet(node[0], FakeKubelet(HOLDERS)):
        out = gathering.collect([])
        gathering.close()
    assert out.errors == []
    assert sorted(values(out, "gputuned_gpu_pod_info")) == [
        ("0", uuid(0), "serving", "resnet-0", "server"),
        ("1", uuid(1), "serving", "resnet-0", "server"),
        ("2", uuid(2), "batch", "bert-a", "main"),
        ("2", uuid(2), "batch", "bert-b", "main"),
    ]
    # Each pod is charged its own processes' memory on the shared GPU 2, not the GPU's 9 GiB;
    # the host process is no pod's.
    assert values(out, "gputuned_gpu_pod_memory_used_bytes") == {
        ("0", "serving", "resnet-0"): 6 * GIB,
        ("2", "batch", "bert-a"): 3 * GIB,
        ("2", "batch", "bert-b"): 5 * GIB,
    }
    assert values(out, "gputuned_gpu_pod_processes") == {
        ("0", "serving", "resnet-0"): 1,
        ("2", "batch", "bert-a"): 1,
        ("2", "batch", "bert-b"): 1,
    }
    assert any("MIG-5c0c8d1e" in note for note in out.notes)


def test_a_pod_that_goes_away_leaves_with_its_series(node):
    kubelet = FakeKubelet(HOLDERS)
    gathering = collector(node)
    with serving_kubelet(node[0], kubelet):
        assert ("2", uuid(2), "batch", "bert-b", "main") in values(gathering.collect([]), "gputuned_gpu_pod_info")
        kubelet.holders = [h for h in HOLDERS if h.pod != "bert-b"]
        node[3].gpus[2].processes.pop(202)
        out = gathering.collect([])
        gathering.close()
    assert [key for key in values(out, "gputuned_gpu_pod_info") if key[3] == "bert-b"] == []
    assert ("2", "batch", "bert-b") not in values(out, "gputuned_gpu_pod_memory_used_bytes")
    assert kubelet.calls == 2  # one List per tick, over the same channel


def test_a_shared_gpu_whose_pod_names_are_unknown_is_not_guessed(node):
    socket, _logs, proc, fake = node
    blind = KubeletCollector(socket, node[1] / "absent", proc, NvmlSession(fake, SYS, retry_seconds=30, clock=ManualClock()))
    with serving_kubelet(socket, FakeKubelet(HOLDERS)):
        out = blind.collect([])
        blind.close()
    assert values(out, "gputuned_gpu_pod_memory_used_bytes") == {("0", "serving", "resnet-0"): 6 * GIB}  # GPU 0's only holder
    assert any("cannot list" in note and "not attributed" in note for note in out.notes)


def test_no_socket_turns_it_off_and_a_silent_socket_is_an_error(node):
    off = collector(node).collect([])
    assert off.samples == [] and off.errors == [] and "pod attribution is off" in off.notes[0]

    with serving_kubelet(node[0], FakeKubelet(HOLDERS)):
        gathering = collector(node)
        assert gathering.collect([]).errors == []
    # The kubelet stopped, its socket file left behind (a kubelet restarting).
    node[0].touch()
    started = time.monotonic()
    out = gathering.collect([])
    assert time.monotonic() - started < 2.0  # bounded by the collector's deadline
    assert len(out.errors) == 1 and out.errors[0].startswith(f"kubelet PodResources List at {node[0]}: UNAVAILABLE")
    assert out.samples == []
    gathering.close()


def test_the_messages_have_the_kubelet_apis_field_numbers():
    """Wire bytes written out by hand from api.proto (v1): PodResources{name=1, namespace=2,
    containers=3}, ContainerResources{name=1, devices=2}, ContainerDevices{resource_name=1,
    device_ids=2}, ListPodResourcesResponse{pod_resources=1}."""
    response = ListPodResourcesResponse()
    pod = response.pod_resources.add(name="p", namespace="n")
    pod.containers.add(name="c").devices.add(resource_name="r", device_ids=["d"])
    devices = b"\x0a\x01r" + b"\x12\x01d"
    container = b"\x0a\x01c" + b"\x12" + bytes([len(devices)]) + devices
    pod_bytes = b"\x0a\x01p" + b"\x12\x01n" + b"\x1a" + bytes([len(container)]) + container
    assert response.SerializeToString() == b"\x0a" + bytes([len(pod_bytes)]) + pod_bytes
    # An unknown field (a newer kubelet's cpu_ids = 3 in ContainerResources) is skipped.
    newer = b"\x0a\x01p" + b"\x1a\x05" + b"\x0a\x01c" + b"\x18\x07"
    parsed = ListPodResourcesResponse.FromString(b"\x0a" + bytes([len(newer)]) + newer)
    assert parsed.pod_resources[0].containers[0].name == "c"


def test_the_daemon_exports_the_pods_of_a_kubernetes_node(tmp_path: Path):
    socket = tmp_path / "kubelet.sock"
    config = tmp_path / "gputuned.toml"
    config.write_text(f'[paths]\nkubelet_socket = "{socket}"\npod_logs_dir = "{tmp_path}"\n')
    holders = [DeviceHolder("serving", "resnet-0", "server", "nvidia.com/gpu", uuid(i)) for i in (3, 4)]
    args = ("--config", str(config), "--nvml-module", "gputuned.testing.fake_nvml:hgx8")
    with serving_kubelet(socket, FakeKubelet(holders)), running_daemon(*args, log=tmp_path / "daemon.log") as (_, url):
        deadline = time.monotonic() + 20
        text = http_get(url)
        while 'gputuned_gpu_pod_info{container="server",gpu="4"' not in text and time.monotonic() < deadline:
            time.sleep(0.5)
            text = http_get(url)
    assert 'gputuned_gpu_pod_info{container="server",gpu="3",namespace="serving",pod="resnet-0"' in text
    assert 'gputuned_collector_success{collector="kubelet"} 1.0' in text
