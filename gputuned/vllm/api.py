"""The parts of vLLM's OpenAI-compatible server the adapter reads: its health and its metrics.

Synchronous, with short timeouts, for the same reason as the Triton client: the adapter
calls it from its poll thread, one call at a time.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from gputuned.adapting.lifecycle import ServerError


class VllmError(ServerError):
    """A call to vLLM failed; the message names the call and the reason."""


class VllmClient:
    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        """`url` is the server's HTTP base (http://host:8000)."""
        self.url = url.rstrip("/")
        self._timeout = timeout

    def ready(self) -> bool:
        """Whether the server answers /health (the engine is up and serving)."""
        try:
            self._get("/health", timeout=1.0)
        except VllmError:
            return False
        return True

    def metrics(self) -> str:
        return self._get("/metrics")

    def _get(self, path: str, timeout: float | None = None) -> str:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout or self._timeout) as response:  # noqa: S310 - configured http URL
                return response.read().decode()
        except urllib.error.HTTPError as exc:
            raise VllmError(f"GET {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:300]}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise VllmError(f"GET {path}: {getattr(exc, 'reason', None) or exc}") from None
