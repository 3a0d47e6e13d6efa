"""A small synchronous client for the parts of Triton's HTTP API the adapter uses.

Synchronous on purpose: the adapter calls it from its own poll thread and from the control
socket's set handler, each one call at a time, with short timeouts; an async client would
add a loop for no concurrency. Every failure is a TritonError whose message says which
call failed and Triton's own reason, including the access-token refusal of a restricted
repository API.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from gputuned.adapting.lifecycle import ServerError

# The header Triton expects on an API restricted with --http-restricted-api.
ACCESS_HEADER = "triton-access-token"
# What Triton answers a load or unload in its NONE and POLL model control modes (the same words for both).
LOADS_REFUSED = "explicit model load / unload is not allowed"
EXPLICIT_NEEDED = (
    "this Triton does not load models on request: start it with --model-control-mode=explicit "
    "(gputuned applies a knob by reloading the model with the new config; the models to serve at start "
    "are then named with --load-model)"
)
# A name no model has: unloading it changes nothing, and tells whether loads are allowed at all.
PROBE_MODEL = "gputuned-model-control-probe"


class TritonError(ServerError):
    """A Triton call failed; the message names the call and Triton's reason."""


class TritonClient:
    def __init__(self, url: str, metrics_url: str, *, access_token: str = "", timeout: float = 5.0) -> None:
        """`url` is Triton's HTTP base (http://host:8000), `metrics_url` its metrics endpoint
        (http://host:8002/metrics); `access_token` goes with repository calls."""
        self.url = url.rstrip("/")
        self.metrics_url = metrics_url
        self._access_token = access_token
        self._timeout = timeout

    def ready(self) -> bool:
        try:
            self._call("GET", "/v2/health/ready", timeout=1.0)
        except TritonError:
            return False
        return True

    def model_ready(self, model: str) -> bool:
        try:
            self._call("GET", f"/v2/models/{model}/ready", timeout=1.0)
        except TritonError:
            return False
        return True

    def model_config(self, model: str) -> dict[str, Any]:
        return self._json("GET", f"/v2/models/{model}/config")

    def model_stats(self, model: str) -> dict[str, Any]:
        """The statistics extension's entry for the model's newest loaded version."""
        answer = self._json("GET", f"/v2/models/{model}/stats")
        versions = answer.get("model_stats") or []
        if not versions:
            raise TritonError(f"GET /v2/models/{model}/stats: no statistics for model {model!r}")
        return max(versions, key=lambda entry: int(entry.get("version") or 0))

    def load(self, model: str, config: dict[str, Any] | None = None, timeout: float = 120.0) -> None:
        """Loads (or reloads) the model, with `config` in place of its repository config when given.
        Triton keeps serving the loaded version until the new one is ready."""
        parameters = {"config": json.dumps(config)} if config is not None else {}
        body = json.dumps({"parameters": parameters}).encode()
        self._call("POST", f"/v2/repository/models/{model}/load", body, repository=True, timeout=timeout)

    def check_model_control(self) -> None:
        """Raises TritonError saying what to do when this Triton refuses model loads (not
        started with --model-control-mode=explicit); changes nothing either way."""
        try:
            self._call("POST", f"/v2/repository/models/{PROBE_MODEL}/unload", b"{}", repository=True)
        except TritonError as exc:
            if LOADS_REFUSED in str(exc):
                raise
            # Any other answer (an unknown model, a missing token) is no sign of the mode.

    def metrics(self) -> str:
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=self._timeout) as response:  # noqa: S310 - configured http URL
                return response.read().decode()
        except (urllib.error.URLError, OSError) as exc:
            raise TritonError(f"GET {self.metrics_url}: {_reason(exc)}") from None

    def _json(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        text = self._call(method, path, body)
        try:
            answer = json.loads(text)
        except ValueError:
            raise TritonError(f"{method} {path}: the answer is not JSON: {text[:200]!r}") from None
        if not isinstance(answer, dict):
            raise TritonError(f"{method} {path}: expected a JSON object, got {text[:200]!r}")
        return answer

    def _call(
        self, method: str, path: str, body: bytes | None = None, *, repository: bool = False, timeout: float | None = None
    ) -> str:
        request = urllib.request.Request(self.url + path, data=body, method=method)  # noqa: S310 - configured http URL
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if repository and self._access_token:
            request.add_header(ACCESS_HEADER, self._access_token)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self._timeout) as response:  # noqa: S310
                return response.read().decode()
        except urllib.error.HTTPError as exc:
            detail = _error_text(exc.read().decode(errors="replace"))
            if repository and "restricted" in detail and not self._access_token:
                detail += "; give the worker the access token (triton_access_token_file)"
            if repository and LOADS_REFUSED in detail:
                detail += f"; {EXPLICIT_NEEDED}"
            raise TritonError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise TritonError(f"{method} {path}: {_reason(exc)}") from None


def _error_text(body: str) -> str:
    """Triton's {"error": "..."} body as its message, or the body itself."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body[:300]
    return str(answer.get("error", body))[:300] if isinstance(answer, dict) else body[:300]


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc)
