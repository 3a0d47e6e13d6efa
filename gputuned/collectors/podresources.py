"""The kubelet's PodResources API (v1), as much of it as pod attribution reads.

The kubelet serves `v1.PodResourcesLister` over gRPC on a Unix socket
(`/var/lib/kubelet/pod-resources/kubelet.sock`): `List` answers which pod and container
hold which devices (for GPUs, the NVIDIA device plugin's IDs: the GPU's UUID, with a
`::N` suffix per replica when the GPU is time-sliced). The messages are declared here
from the API's published definitions (k8s.io/kubelet/pkg/apis/podresources/v1/api.proto)
with the same package, names, field numbers and types, so what goes over the wire is the
kubelet's own protocol; fields this project does not read (CPU IDs, memory, dynamic
resources, topology) are left out and skipped by the parser like any unknown field.
Declaring them in code spares a protoc step and generated files tied to one protobuf
release.

    service PodResourcesLister { rpc List(ListPodResourcesRequest) returns (ListPodResourcesResponse) {} }
    message ListPodResourcesRequest {}
    message ListPodResourcesResponse { repeated PodResources pod_resources = 1; }
    message PodResources { string name = 1; string namespace = 2; repeated ContainerResources containers = 3; }
    message ContainerResources { string name = 1; repeated ContainerDevices devices = 2; }
    message ContainerDevices { string resource_name = 1; repeated string device_ids = 2; }
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# gRPC's core logs a kubelet restart's GOAWAY at info level to stderr; the collector reports
# what matters itself, in the daemon's log.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "v1"
SERVICE = f"{PACKAGE}.PodResourcesLister"
LIST_METHOD = f"/{SERVICE}/List"
DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"

_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED

# (message, [(field, number, label, type, message type or "")])
_MESSAGES: list[tuple[str, list[tuple[str, int, int, int, str]]]] = [
    ("ListPodResourcesRequest", []),
    ("ListPodResourcesResponse", [("pod_resources", 1, _REPEATED, _MESSAGE, "PodResources")]),
    (
        "PodResources",
        [
            ("name", 1, _OPTIONAL, _STRING, ""),
            ("namespace", 2, _OPTIONAL, _STRING, ""),
            ("containers", 3, _REPEATED, _MESSAGE, "ContainerResources"),
        ],
    ),
    ("ContainerResources", [("name", 1, _OPTIONAL, _STRING, ""), ("devices", 2, _REPEATED, _MESSAGE, "ContainerDevices")]),
    ("ContainerDevices", [("resource_name", 1, _OPTIONAL, _STRING, ""), ("device_ids", 2, _REPEATED, _STRING, "")]),
]


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name="gputuned/kubelet/podresources/v1/api.proto", package=PACKAGE, syntax="proto3")
    for name, fields in _MESSAGES:
        message = file.message_type.add(name=name)
        for field_name, number, label, kind, type_name in fields:
            field = message.field.add(name=field_name, number=number, label=label, type=kind)
            if type_name:
                field.type_name = f".{PACKAGE}.{type_name}"
    service = file.service.add(name="PodResourcesLister")
    service.method.add(
        name="List", input_type=f".{PACKAGE}.ListPodResourcesRequest", output_type=f".{PACKAGE}.ListPodResourcesResponse"
    )
    return file


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())
ListPodResourcesRequest: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.ListPodResourcesRequest"))
ListPodResourcesResponse: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{PACKAGE}.ListPodResourcesResponse")
)


@dataclass(frozen=True)
class DeviceHolder:
    """One container holding one device of one resource."""

    namespace: str
    pod: str
    container: str
    resource: str  # e.g. nvidia.com/gpu
    device_id: str  # e.g. GPU-8f6c...; GPU-8f6c...::2 for a time-sliced replica


class KubeletUnreachable(Exception):
    """The socket is there, but `List` did not answer (the kubelet restarting, or not serving it)."""


class PodResourcesClient:
    """A channel to the kubelet's socket, kept open across ticks (gRPC reconnects it when the
    kubelet restarts)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._channel = grpc.insecure_channel(f"unix://{socket_path}")
        self._list = self._channel.unary_unary(
            LIST_METHOD,
            request_serializer=ListPodResourcesRequest.SerializeToString,
            response_deserializer=ListPodResourcesResponse.FromString,
        )

    def device_holders(self, timeout: float) -> list[DeviceHolder]:
        """Every (pod, container, device) the kubelet reports; raises KubeletUnreachable."""
        try:
            response = self._list(ListPodResourcesRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "ERROR"
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            raise KubeletUnreachable(f"kubelet PodResources List at {self.socket_path}: {code}: {details}") from None
        return [
            DeviceHolder(pod.namespace, pod.name, container.name, devices.resource_name, device_id)
            for pod in response.pod_resources
            for container in pod.containers
            for devices in container.devices
            for device_id in devices.device_ids
        ]

    def close(self) -> None:
        self._channel.close()
