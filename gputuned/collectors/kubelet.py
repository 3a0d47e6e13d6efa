"""Which Kubernetes pods hold and use each GPU: the kubelet's PodResources API and /proc.

Two views, because on a shared GPU (time-slicing, MPS) they differ:
- allocation: the kubelet says which pod and container hold which GPU
  (`gputuned_gpu_pod_info{gpu,uuid,namespace,pod,container}`; a time-sliced GPU lists
  each pod holding one of its replicas);
- use: NVML lists the processes running on each GPU, and each process's cgroup
  (/proc/PID/cgroup, from the host's /proc) names its pod's UID, which the CRI's log
  directory (/var/log/pods/NAMESPACE_NAME_UID) turns into a name. Memory and process
  counts are summed per pod (`gputuned_gpu_pod_memory_used_bytes`,
  `gputuned_gpu_pod_processes`), so a pod is charged for what its own processes use,
  not for a copy of the whole GPU (dcgm-exporter's per-GPU labels copy every figure to
  every pod sharing it).

Label cardinality is bounded by the pods on the node: per-pod sums, never per-PID series,
and at most MAX_HOLDERS allocation series. With no kubelet socket (not a Kubernetes node,
or the directory not mounted) the collector is off: it says so in a note, once, and
exports nothing; a socket that does not answer is an error (`gputuned_collector_success`
0). The kubelet is asked once per tick with a short deadline, over a channel kept open.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gputuned.collectors.nvml_session import GpuDevice, NvmlSession, NvmlUnavailable
from gputuned.procfs import parse_cgroup_pod_uid, parse_pod_log_dir, read_text
from gputuned.samples import Collected, MetricSpec, WorkerTarget

if TYPE_CHECKING:
    from gputuned.collectors.podresources import DeviceHolder, PodResourcesClient

POD_INFO = MetricSpec(
    "gputuned_gpu_pod_info",
    "gauge",
    "A container the kubelet allocated this GPU to (one of its replicas when time-sliced); always 1.",
    ("gpu", "uuid", "namespace", "pod", "container"),
)
POD_MEMORY = MetricSpec(
    "gputuned_gpu_pod_memory_used_bytes",
    "gauge",
    "Device memory used by the pod's processes on this GPU (from NVML's process list and each process's cgroup).",
    ("gpu", "namespace", "pod"),
)
POD_PROCESSES = MetricSpec(
    "gputuned_gpu_pod_processes", "gauge", "The pod's processes running on this GPU.", ("gpu", "namespace", "pod")
)
SPECS = (POD_INFO, POD_MEMORY, POD_PROCESSES)

MAX_HOLDERS = 512  # allocation series at most: a node's pods times its GPUs, with room
GPU_RESOURCE_PREFIX = "nvidia.com/"
TIMEOUT_SECONDS = 0.5


class KubeletCollector:
    name = "kubelet"

    def __init__(
        self, socket_path: Path, pod_logs_dir: Path, proc_root: Path, session: NvmlSession, timeout: float = TIMEOUT_SECONDS
    ) -> None:
        self._socket_path = socket_path
        self._pod_logs_dir = pod_logs_dir
        self._proc_root = proc_root
        self._session = session
        self._timeout = timeout
        self._client: PodResourcesClient | None = None

    def collect(self, targets: Sequence[WorkerTarget]) -> Collected:  # noqa: ARG002 - the Collector protocol; reads pods, not targets
        out = Collected()
        if not self._socket_path.exists():
            out.notes.append(
                f"no kubelet pod-resources socket at {self._socket_path}: pod attribution is off "
                "(not a Kubernetes node, or its pod-resources directory is not mounted)"
            )
            return out
        try:  # grpcio is an extra (gputuned[kubernetes]), imported only on a Kubernetes node
            from gputuned.collectors.podresources import KubeletUnreachable, PodResourcesClient
        except ImportError as exc:
            out.notes.append(f"pod attribution needs grpcio and protobuf (pip install 'gputuned[kubernetes]'): {exc}")
            return out
        if self._client is None:
            self._client = PodResourcesClient(self._socket_path)
        try:
            holders = self._client.device_holders(self._timeout)
            devices = self._session.devices()
        except (KubeletUnreachable, NvmlUnavailable) as exc:
            out.errors.append(str(exc))
            return out
        allocated = self._collect_allocations(holders, devices, out)
        pods = self._pods_by_uid(out)
        for device in devices:
            self._collect_use(device, allocated.get(str(device.index), set()), pods, out)
        return out

    def _collect_allocations(
        self, holders: list[DeviceHolder], devices: list[GpuDevice], out: Collected
    ) -> dict[str, set[tuple[str, str]]]:
        """gputuned_gpu_pod_info per (GPU, container); returns GPU index -> the pods holding it."""
        by_uuid = {device.uuid: device for device in devices}
        seen: set[tuple[str, ...]] = set()
        allocated: dict[str, set[tuple[str, str]]] = defaultdict(set)
        unknown = set()
        for holder in holders:
            if not holder.resource.startswith(GPU_RESOURCE_PREFIX):
                continue
            uuid = holder.device_id.partition("::")[0]  # GPU-...::N is replica N of a time-sliced GPU
            device = by_uuid.get(uuid)
            if device is None:
                unknown.add(uuid)
                continue
            labels = (str(device.index), uuid, holder.namespace, holder.pod, holder.container)
            if labels in seen:
                continue
            if len(seen) >= MAX_HOLDERS:
                out.notes.append(f"more than {MAX_HOLDERS} GPU allocations on this node: the rest are not exported")
                break
            seen.add(labels)
            allocated[labels[0]].add((holder.namespace, holder.pod))
            out.add(POD_INFO, 1, *labels)
        if unknown:
            out.notes.append(
                f"the kubelet allocated devices NVML does not list as GPUs (MIG instances?): {', '.join(sorted(unknown))}"
            )
        return allocated

    def _pods_by_uid(self, out: Collected) -> dict[str, tuple[str, str]]:
        """Pod UID -> (namespace, name), from the CRI's log directory names."""
        try:
            names = os.listdir(self._pod_logs_dir)
        except OSError as exc:
            out.notes.append(
                f"cannot list {self._pod_logs_dir} ({exc.strerror}): processes on a GPU held by several pods are not attributed"
            )
            return {}
        pods = {}
        for name in names:
            parsed = parse_pod_log_dir(name)
            if parsed is not None:
                uid, namespace, pod = parsed
                pods[uid] = (namespace, pod)
        return pods

    def _collect_use(
        self, device: GpuDevice, holders: set[tuple[str, str]], pods: dict[str, tuple[str, str]], out: Collected
    ) -> None:
        """Each pod's processes on this GPU: their memory and how many."""
        processes = self._session.read_or_note(out.notes, device, "nvmlDeviceGetComputeRunningProcesses") or []
        memory: dict[tuple[str, str], int] = defaultdict(int)
        count: dict[tuple[str, str], int] = defaultdict(int)
        for process in processes:
            try:
                uid = parse_cgroup_pod_uid(read_text(self._proc_root, process.pid, "cgroup"))
            except OSError:
                continue  # exited since NVML listed it, or not visible from here
            if uid is None:
                continue  # not in a pod (a host process, gputuned's own worker)
            owner = pods.get(uid) or (next(iter(holders)) if len(holders) == 1 else None)
            if owner is None:
                continue  # the pod's name is unknown and several pods hold this GPU: no guess
            memory[owner] += process.usedGpuMemory or 0
            count[owner] += 1
        gpu = str(device.index)
        for (namespace, pod), processes_of_pod in count.items():
            out.add(POD_MEMORY, memory[(namespace, pod)], gpu, namespace, pod)
            out.add(POD_PROCESSES, processes_of_pod, gpu, namespace, pod)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
