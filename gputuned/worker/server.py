"""The worker's HTTP API: the Open Inference Protocol v2 subset existing clients use.

Triton's and KServe's clients work unchanged: health, server and model metadata, model
readiness and config, inference with JSON tensors or the binary tensor data extension
(both ways), and Triton's repository index. Every malformed request is answered with a
4xx and a JSON `error` saying what is wrong; a full queue with 503 and Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import torch
from aiohttp import web

from gputuned import __version__
from gputuned.datatypes import DATATYPES
from gputuned.worker.batcher import DynamicBatcher, PendingRequest, QueueFull
from gputuned.worker.codec import HEADER_LENGTH, BadRequest, Codec
from gputuned.worker.lanes import InferenceFailed
from gputuned.worker.models import LoadedModel
from gputuned.worker.stats import WorkerStats

MAX_BODY_BYTES = 64 * 1024 * 1024
RETRY_AFTER_SECONDS = "1"


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


class InferenceApp:
    """Routes of the v2 API over one loaded model and its batcher."""

    def __init__(self, model: LoadedModel, batcher: DynamicBatcher, stats: WorkerStats, max_request_items: int) -> None:
        self._model = model
        self._batcher = batcher
        self._stats = stats
        self._max_request_items = max_request_items
        self._codec = Codec(model, max_request_items)
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
            plan, tensor = self._codec.decode(await request.read(), request.headers.get(HEADER_LENGTH))
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
        encoded = self._codec.encode(plan, outputs)
        headers = None if encoded.header_length is None else {HEADER_LENGTH: str(encoded.header_length)}
        self._stats.request_completed(time.perf_counter() - started)
        return web.Response(body=encoded.body, content_type=encoded.content_type, headers=headers)
