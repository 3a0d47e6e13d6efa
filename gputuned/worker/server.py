"""The worker's HTTP API: the Open Inference Protocol v2 subset existing clients use.

Triton's and KServe's clients work unchanged: health, server and model metadata, model
readiness and config, inference with JSON tensors or the binary tensor data extension
(both ways), and Triton's repository index. Every malformed request is answered with a
4xx and a JSON `error` saying what is wrong; a full queue with 503 and Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from aiohttp import web

from gputuned import __version__
from gputuned.datatypes import DATATYPES
from gputuned.worker.batcher import DynamicBatcher, PendingRequest, QueueFull
from gputuned.worker.lanes import InferenceFailed
from gputuned.worker.models import LoadedModel
from gputuned.worker.stats import WorkerStats

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_BODY_BYTES = 64 * 1024 * 1024
RETRY_AFTER_SECONDS = "1"


class BadRequest(Exception):
    """The request is malformed; the message tells the client what to fix."""


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """aiohttp's own 404/405/413 answers as JSON `error` bodies like ours, and a request that
    cannot even be read into memory (the worker at its memory limit) as a 503 to retry."""
    try:
        return await handler(request)
    except MemoryError:
        return _error(503, "out of memory while reading the request; retry later or send fewer items", **{"Retry-After": "1"})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        if exc.status == 413:
            reason = f"request body exceeds the limit of {MAX_BODY_BYTES} bytes"
        return _error(exc.status, reason)


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON part and the binary part of an inference request (binary extension)."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise BadRequest(f"{HEADER_LENGTH} {header_length!r} is not an integer") from None
        if not 0 <= length <= len(body):
            raise BadRequest(f"{HEADER_LENGTH} {length} is outside the body of {len(body)} bytes")
        json_part, binary = body[:length], body[length:]
    try:
        document = json.loads(json_part)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("request body is not valid JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise BadRequest("request body must be a JSON object")
    return document, binary


def parameters_of(holder: dict[str, Any], where: str) -> dict[str, Any]:
    """The optional 'parameters' object of the request, an input or an output."""
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"{where}: 'parameters' must be an object")
    return parameters


def decode_input(document: dict[str, Any], binary: bytes, model: LoadedModel, max_items: int) -> torch.Tensor:
    """The request's input tensor [n, *shape], checked against the model's signature."""
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"'inputs' must be a list holding one tensor, {model.input.name!r}")
    tensor = inputs[0]
    spec = model.input
    if tensor.get("name") != spec.name:
        raise BadRequest(f"unknown input {tensor.get('name')!r}; model {model.name} takes {spec.name!r}")
    if tensor.get("datatype") != spec.datatype:
        raise BadRequest(f"input {spec.name} must be {spec.datatype}, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise BadRequest(f"input {spec.name}: 'shape' must be a list of integers")
    if tuple(shape[1:]) != spec.shape or len(shape) != len(spec.shape) + 1:
        raise BadRequest(f"input {spec.name} has shape {shape}; expected [batch, {', '.join(map(str, spec.shape))}]")
    items = shape[0]
    if not 1 <= items <= max_items:
        raise BadRequest(f"input {spec.name}: batch dimension {items} is outside 1..{max_items}")
    count = math.prod(shape)
    parameters = parameters_of(tensor, f"input {spec.name}")
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        expected = count * spec.numpy_dtype.itemsize
        if size != expected or len(binary) != expected:
            raise BadRequest(
                f"input {spec.name}: binary data of {len(binary)} bytes (declared {size}); {shape} {spec.datatype} needs {expected}"
            )
        array = np.frombuffer(binary, dtype=spec.numpy_dtype).copy()
    else:
        if "data" not in tensor:
            raise BadRequest(f"input {spec.name} has neither 'data' nor binary_data_size")
        try:
            array = np.asarray(tensor["data"], dtype=spec.numpy_dtype)
        except (TypeError, ValueError, OverflowError) as exc:
            raise BadRequest(f"input {spec.name}: data is not {spec.datatype}: {exc}") from None
        if array.size != count:
            raise BadRequest(f"input {spec.name}: {array.size} values for shape {shape} ({count} needed)")
    return torch.from_numpy(array.reshape(shape))


def requested_outputs(document: dict[str, Any], model: LoadedModel) -> list[tuple[int, bool]]:
    """(output index, binary?) for each output to return, in the order asked."""
    default_binary = bool(parameters_of(document, "request").get("binary_data_output", False))
    names = {spec.name: index for index, spec in enumerate(model.outputs)}
    asked = document.get("outputs")
    if asked is None:
        return [(index, default_binary) for index in range(len(model.outputs))]
    if not isinstance(asked, list):
        raise BadRequest("'outputs' must be a list")
    chosen = []
    for output in asked:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str) or output["name"] not in names:
            name = output.get("name") if isinstance(output, dict) else output
            raise BadRequest(f"unknown output {name!r}; model {model.name} has {', '.join(names)}")
        binary = bool(parameters_of(output, f"output {output['name']}").get("binary_data", default_binary))
        chosen.append((names[output["name"]], binary))
    return chosen


def encode_response(document: dict[str, Any], model: LoadedModel, outputs: list[torch.Tensor]) -> web.Response:
    chosen = requested_outputs(document, model)
    tensors, blobs = [], []
    for index, binary in chosen:
        spec = model.outputs[index]
        array = outputs[index].numpy()
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
        if binary:
            blob = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        tensors.append(entry)
    body: dict[str, Any] = {"model_name": model.name, "model_version": "1", "outputs": tensors}
    if "id" in document:
        body["id"] = document["id"]
    header = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return web.Response(body=header, content_type="application/json")
    return web.Response(
        body=header + b"".join(blobs),
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


class InferenceApp:
    """Routes of the v2 API over one loaded model and its batcher."""

    def __init__(self, model: LoadedModel, batcher: DynamicBatcher, stats: WorkerStats, max_request_items: int) -> None:
        self._model = model
        self._batcher = batcher
        self._stats = stats
        self._max_request_items = max_request_items
        self.ready = False  # set once the lanes run; cleared when draining

    def build(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
        model_paths = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
        app.router.add_get("/v2", self.server_metadata)
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.server_ready)
        app.router.add_post("/v2/repository/index", self.repository_index)
        for path in model_paths:
            app.router.add_get(path, self.model_metadata)
            app.router.add_get(path + "/ready", self.model_ready)
            app.router.add_get(path + "/config", self.model_config)
            app.router.add_post(path + "/infer", self.infer)
        return app

    def _check_model(self, request: web.Request) -> None:
        name = request.match_info["name"]
        if name != self._model.name:
            raise web.HTTPNotFound(text=f"unknown model {name!r}; this worker serves {self._model.name!r}")
        version = request.match_info.get("version")
        if version not in (None, "1"):
            raise web.HTTPNotFound(text=f"model {name} has no version {version!r}; it has version 1")

    async def server_metadata(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"name": "gputuned-worker", "version": __version__, "extensions": ["binary_tensor_data", "model_repository"]}
        )

    async def live(self, _request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def server_ready(self, _request: web.Request) -> web.Response:
        return web.json_response({"ready": self.ready}, status=200 if self.ready else 503)

    async def repository_index(self, _request: web.Request) -> web.Response:
        state = "READY" if self.ready else "UNAVAILABLE"
        return web.json_response([{"name": self._model.name, "version": "1", "state": state}])

    async def model_metadata(self, request: web.Request) -> web.Response:
        self._check_model(request)
        model = self._model
        return web.json_response(
            {
                "name": model.name,
                "versions": ["1"],
                "platform": model.platform,
                "inputs": [model.input.metadata()],
                "outputs": [spec.metadata() for spec in model.outputs],
            }
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        self._check_model(request)
        return web.json_response({"name": self._model.name, "ready": self.ready}, status=200 if self.ready else 503)

    async def model_config(self, request: web.Request) -> web.Response:
        self._check_model(request)
        model = self._model

        def dims(spec: Any) -> dict[str, Any]:
            return {"name": spec.name, "data_type": DATATYPES[spec.datatype].triton, "dims": list(spec.shape)}

        return web.json_response(
            {
                "name": model.name,
                "platform": model.platform,
                "max_batch_size": self._max_request_items,
                "input": [dims(model.input)],
                "output": [dims(spec) for spec in model.outputs],
                "dynamic_batching": {},
            }
        )

    async def infer(self, request: web.Request) -> web.Response:
        """Every request ends in exactly one outcome of WorkerStats: completed, rejected (the
        client's mistake), refused (not now) or failed (the server's fault)."""
        started = time.perf_counter()
        self._stats.request_received()
        try:
            self._check_model(request)
        except web.HTTPNotFound:
            self._stats.request_rejected()
            raise
        if not self.ready:
            self._stats.request_refused()
            refusal = _error(503, "the worker is not ready (starting or draining)", **{"Retry-After": RETRY_AFTER_SECONDS})
            refusal.force_close()  # no keep-alive: a client should not send its next request down this connection
            return refusal
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            # Refused on its declared length, before reading it: an oversize body costs no copy.
            self._stats.request_rejected()
            refusal = _error(413, f"request body exceeds the limit of {MAX_BODY_BYTES} bytes")
            refusal.force_close()  # the unread body must not be taken for the next request
            return refusal
        try:
            document, binary = split_body(await request.read(), request.headers.get(HEADER_LENGTH))
            tensor = decode_input(document, binary, self._model, self._max_request_items)
            requested_outputs(document, self._model)  # refuse bad output names before queueing
        except BadRequest as exc:
            self._stats.request_rejected()
            return _error(400, str(exc))
        except web.HTTPRequestEntityTooLarge:  # a body without a declared length that ran past the limit
            self._stats.request_rejected()
            raise
        except MemoryError:  # answered by json_errors with a 503 to retry
            self._stats.request_refused()
            raise
        future: asyncio.Future[list[torch.Tensor]] = asyncio.get_running_loop().create_future()
        try:
            self._batcher.submit(PendingRequest(tensor, future, started))
        except QueueFull as exc:
            self._stats.request_refused()
            return _error(503, f"queue full: {exc}; retry later", **{"Retry-After": RETRY_AFTER_SECONDS})
        try:
            outputs = await future
        except InferenceFailed as exc:
            self._stats.request_failed()
            return _error(503 if exc.out_of_memory else 500, str(exc))
        response = encode_response(document, self._model, outputs)
        self._stats.request_completed(time.perf_counter() - started)
        return response
