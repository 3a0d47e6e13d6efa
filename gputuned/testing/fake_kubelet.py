"""A stand-in kubelet: the PodResources `List` service over gRPC on a real Unix socket.

It speaks the kubelet's own protocol (the messages of gputuned/collectors/podresources.py,
the service path /v1.PodResourcesLister/List) through grpcio's server, so the collector is
tested against a real gRPC exchange; what it answers is set by the test (`holders`), and
can change between calls (a pod that goes away).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from gputuned.collectors.podresources import (
    SERVICE,
    DeviceHolder,
    ListPodResourcesRequest,
    ListPodResourcesResponse,
)


class FakeKubelet:
    def __init__(self, holders: list[DeviceHolder]) -> None:
        self._lock = threading.Lock()
        self._holders = list(holders)
        self.calls = 0

    @property
    def holders(self) -> list[DeviceHolder]:
        with self._lock:
            return list(self._holders)

    @holders.setter
    def holders(self, holders: list[DeviceHolder]) -> None:
        with self._lock:
            self._holders = list(holders)

    def answer(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls += 1
        response = ListPodResourcesResponse()
        pods: dict[tuple[str, str], Any] = {}
        for holder in self.holders:
            pod = pods.get((holder.namespace, holder.pod))
            if pod is None:
                pod = pods[(holder.namespace, holder.pod)] = response.pod_resources.add(
                    name=holder.pod, namespace=holder.namespace
                )
            container = next((c for c in pod.containers if c.name == holder.container), None) or pod.containers.add(
                name=holder.container
            )
            devices = next((d for d in container.devices if d.resource_name == holder.resource), None) or container.devices.add(
                resource_name=holder.resource
            )
            devices.device_ids.append(holder.device_id)
        return response


@contextmanager
def serving_kubelet(socket_path: Path, kubelet: FakeKubelet) -> Iterator[FakeKubelet]:
    """`kubelet` answering on `socket_path` until the block ends (the socket is then removed)."""
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(
        kubelet.answer,
        request_deserializer=ListPodResourcesRequest.FromString,
        response_serializer=ListPodResourcesResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"List": handler}),))
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    try:
        yield kubelet
    finally:
        server.stop(grace=None).wait()
        socket_path.unlink(missing_ok=True)
