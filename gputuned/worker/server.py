"""The worker's HTTP API: the Open Inference Protocol v2 subset existing clients use.

Triton's and KServe's clients work unchanged: health, server and model metadata, model
readiness and config, inference with JSON tensors or the binary tensor data extension
(both ways), and Triton's repository index. Every malformed request is answered with a
4xx and a JSON `error` saying what is wrong; a full queue with 503 and Retry-After.

The routes answer through httpserver's callback: an inference request is decoded and
queued here, and answered from its batch's completion (`_InferenceReply`), with no
coroutine of its own.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from gputuned import __version__
from gputuned.datatypes import DATATYPES
from gputuned.worker.batcher import DynamicBatcher, Outcome, PendingRequest, QueueFull
from gputuned.worker.codec import HEADER_LENGTH, BadRequest, Codec, RequestPlan
from gputuned.worker.httpserver import OUT_OF_MEMORY, RETRY_AFTER, Request, Respond, Response, error_response, json_response
from gputuned.worker.lanes import InferenceFailed
from gputuned.worker.models import LoadedModel
from gputuned.worker.stats import WorkerStats

MAX_BODY_BYTES = 64 * 1024 * 1024
HEADER_LENGTH_KEY = HEADER_LENGTH.lower().encode()  # httpserver's header names are bytes in lower case
MODEL_ROUTES = {"": "GET", "ready": "GET", "config": "GET", "infer": "POST"}  # what follows /v2/models/{name}[/versions/{v}]
KNOWN_INFER_PATHS = 16  # the served model's inference paths remembered as clients spell them (with or without a version, "/")


class _NotFound(Exception):
    pass


class InferenceApp:
    """Routes of the v2 API over one loaded model and its batcher."""

    def __init__(self, model: LoadedModel, batcher: DynamicBatcher, stats: WorkerStats, max_request_items: int) -> None:
        self._model = model
        self._batcher = batcher
        self._stats = stats
        self._max_request_items = max_request_items
        self._codec = Codec(model, max_request_items)
        self._infer_paths: set[str] = set()  # paths already routed to this model's inference
        self.ready = False  # set once the lanes run; cleared when draining
        self._server_routes: dict[str, tuple[str, Callable[[], Response]]] = {
            "/v2": ("GET", self._server_metadata),
            "/v2/health/live": ("GET", lambda: json_response({"live": True})),
            "/v2/health/ready": ("GET", lambda: json_response({"ready": self.ready}, 200 if self.ready else 503)),
            "/v2/repository/index": ("POST", self._repository_index),
        }

    def handle(self, request: Request, respond: Respond) -> None:
        """httpserver's handler: routes `request` and answers it through `respond`."""
        if request.path in self._infer_paths and request.method == "POST":
            self._infer_model(request, respond)  # routed before: its model and version checked already
            return
        path = request.path.rstrip("/") or "/"
        if path.startswith("/v2/models/"):
            self._model_route(request, *_model_path(path), respond)
            return
        route = self._server_routes.get(path)
        if route is None:
            respond(error_response(404, f"no endpoint at {request.path}; this server speaks the v2 inference protocol under /v2"))
        elif request.method != route[0]:
            respond(_wrong_method(request, route[0]))
        else:
            respond(route[1]())

    def refused(self, path: str, response: Response) -> None:
        """httpserver's refusals of an inference request: oversize or malformed is the
        client's mistake (rejected), no memory to read it is "not now" (refused)."""
        if path.endswith("/infer"):
            self._stats.request_received()
            if response.status == 503:
                self._stats.request_refused()
            else:
                self._stats.request_rejected()

    def _model_route(self, request: Request, name: str, version: str | None, action: str, respond: Respond) -> None:
        method = MODEL_ROUTES.get(action)
        if method is None:
            respond(error_response(404, f"no endpoint at {request.path}; a model has metadata, /ready, /config and /infer"))
            return
        if request.method != method:
            respond(_wrong_method(request, method))
            return
        try:
            self._check_model(name, version)
        except _NotFound as exc:
            if action == "infer":
                self._stats.request_received()
                self._stats.request_rejected()
            respond(error_response(404, str(exc)))
            return
        if action == "infer":
            if len(self._infer_paths) < KNOWN_INFER_PATHS:
                self._infer_paths.add(request.path)
            self._infer_model(request, respond)
        elif action == "ready":
            respond(json_response({"name": self._model.name, "ready": self.ready}, 200 if self.ready else 503))
        elif action == "config":
            respond(self._model_config())
        else:
            respond(self._model_metadata())

    def _check_model(self, name: str, version: str | None) -> None:
        if name != self._model.name:
            raise _NotFound(f"unknown model {name!r}; this worker serves {self._model.name!r}")
        if version not in (None, "1"):
            raise _NotFound(f"model {name} has no version {version!r}; it has version 1")

    def _server_metadata(self) -> Response:
        return json_response(
            {"name": "gputuned-worker", "version": __version__, "extensions": ["binary_tensor_data", "model_repository"]}
        )

    def _repository_index(self) -> Response:
        state = "READY" if self.ready else "UNAVAILABLE"
        return json_response([{"name": self._model.name, "version": "1", "state": state}])

    def _model_metadata(self) -> Response:
        model = self._model
        return json_response(
            {
                "name": model.name,
                "versions": ["1"],
                "platform": model.platform,
                "inputs": [spec.metadata() for spec in model.inputs],
                "outputs": [spec.metadata() for spec in model.outputs],
            }
        )

    def _model_config(self) -> Response:
        model = self._model

        def dims(spec: Any) -> dict[str, Any]:
            entry = {"name": spec.name, "data_type": DATATYPES[spec.datatype].triton, "dims": list(spec.shape)}
            return {**entry, "optional": True} if spec.mask else entry  # the worker builds a mask left out

        config: dict[str, Any] = {
            "name": model.name,
            "platform": model.platform,
            "max_batch_size": self._max_request_items,
            "input": [dims(spec) for spec in model.inputs],
            "output": [dims(spec) for spec in model.outputs],
            "dynamic_batching": {},
        }
        if model.variable:  # Triton's model config has no field for it: a parameter, as its backends take one
            config["parameters"] = {"max_sequence_length": {"string_value": str(model.max_length)}}
        return json_response(config)

    def _infer_model(self, request: Request, respond: Respond) -> None:
        """An inference request to this worker's model. Every request ends in exactly one
        outcome of WorkerStats: completed, rejected (the client's mistake), refused (not
        now) or failed (the server's fault)."""
        stats = self._stats
        stats.request_received()
        if not self.ready:
            stats.request_refused()
            # No keep-alive: a client should not send its next request down this connection.
            respond(error_response(503, "the worker is not ready (starting or draining)", RETRY_AFTER, close=True))
            return
        try:
            plan, tensors = self._codec.decode(request.body, request.headers.get(HEADER_LENGTH_KEY))
        except BadRequest as exc:
            stats.request_rejected()
            respond(error_response(400, str(exc)))
            return
        except MemoryError:
            stats.request_refused()
            respond(error_response(503, OUT_OF_MEMORY, RETRY_AFTER))
            return
        reply = _InferenceReply(self._codec, stats, plan, request.received, respond)
        try:
            self._batcher.submit(PendingRequest(tensors, plan.length, reply, request.received))
        except QueueFull as full:
            stats.request_refused()
            respond(error_response(503, f"queue full: {full}; retry later", RETRY_AFTER))


class _InferenceReply:
    """Answers one queued inference request with its batch's outcome."""

    __slots__ = ("_codec", "_plan", "_received", "_respond", "_stats")

    def __init__(self, codec: Codec, stats: WorkerStats, plan: RequestPlan, received: float, respond: Respond) -> None:
        self._codec = codec
        self._stats = stats
        self._plan = plan
        self._received = received
        self._respond = respond

    def __call__(self, outcome: Outcome) -> None:
        if isinstance(outcome, BaseException):
            self._stats.request_failed()
            out_of_memory = isinstance(outcome, InferenceFailed) and outcome.out_of_memory
            self._respond(error_response(503 if out_of_memory else 500, str(outcome)))
            return
        try:
            encoded = self._codec.encode(self._plan, outcome)
        except Exception as exc:  # noqa: BLE001 - outputs the codec cannot write fail this request, not the lane
            self._stats.request_failed()
            self._respond(error_response(500, f"the model's outputs could not be encoded: {type(exc).__name__}: {exc}"))
            return
        self._stats.request_completed(time.perf_counter() - self._received)
        self._respond(Response(200, encoded.body, encoded.content_type, encoded.headers))


@functools.lru_cache(maxsize=256)
def _model_path(path: str) -> tuple[str, str | None, str]:
    """(model name, version or None, action) of a path under /v2/models/, worked out once
    per path: a client sends the same one again and again."""
    parts = path.split("/")[3:]  # after "", "v2", "models"
    name, version = parts[0], None
    if len(parts) >= 3 and parts[1] == "versions":
        version, parts = parts[2], [name, *parts[3:]]
    return name, version, "/".join(parts[1:])


def _wrong_method(request: Request, allowed: str) -> Response:
    return error_response(405, f"{request.method} is not allowed on {request.path}; use {allowed}", (("Allow", allowed),))
