"""The Triton model as the daemon sees a worker: knobs, all-or-nothing sets, cumulative stats.

It implements the control socket's handler (control/server.py). A set validates every value
first, then writes the whole knob set into the model's config and reloads the model once
through the repository API; Triton keeps serving the loaded version until the new one is
ready, so requests neither fail nor stop (measured: bench/triton_online.py). When Triton refuses
the new config, the model keeps its old one and the set is nacked with Triton's reason.
After every set, and whenever Triton comes back after being unreachable (a restart by its
owner in attach mode), the knobs are read back from the config Triton reports, so the
daemon's view and Triton's never diverge; the accepted values are then written again.

With write-back (`repository.ConfigFile`), knobs the daemon reports as accepted are written
into the model's config.pbtxt, so the repository does not drift from what runs.

Stats are polled (`poll`, from the adapter's poll thread) rather than computed on demand,
so a stats message never waits on Triton.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from gputuned.adapting.lifecycle import POLL_SECONDS
from gputuned.adapting.worker import AdaptedWorker
from gputuned.control.protocol import message
from gputuned.knobs import KnobError, KnobSpec, validate_changes
from gputuned.performance import Counters
from gputuned.triton import model_config
from gputuned.triton.api import TritonClient, TritonError
from gputuned.triton.readings import LatencyEstimate, MetricsReading, parse_metrics, raw_counters, worker_stats
from gputuned.triton.repository import ConfigFile, WriteBackError

log = logging.getLogger(__name__)

# Polls a set waits for after its reload (see _await_polls): the first takes in the requests
# the reload held up; the two after it span more than a stats interval, so a stats report
# carrying them goes out before the ack, and the trial measured from the ack leaves them out.
SETTLE_POLLS = 3


class TritonWorker(AdaptedWorker):
    server_name = "Triton"

    def __init__(
        self,
        client: TritonClient,
        model: str,
        device: str,
        clock: Callable[[], float] = time.monotonic,
        write_back: ConfigFile | None = None,
    ) -> None:
        super().__init__({})
        self._client = client
        self._write_back = write_back
        self._model = model
        self._device = device
        self._clock = clock
        self._reloading = threading.Lock()  # one reload at a time: a set, or the knobs put back after a restart
        self._config: dict[str, Any] = {}
        self._specs: dict[str, KnobSpec] = {}
        self._counters = Counters()
        self._latency = LatencyEstimate()
        self._polls = 0  # polls done, under `_polled`
        self._polled = threading.Condition()

    # --- start ----------------------------------------------------------------------------

    def attach(self, saved: Mapping[str, int]) -> None:
        """Reads the model's config and applies `saved` knobs (skipped with a warning if Triton
        refuses them). TritonError when the model's config cannot be read."""
        config = self._client.model_config(self._model)
        with self._lock:
            self._adopt(config, model_config.knob_specs(config))
        self._start(saved)

    def _adopt(self, config: dict[str, Any], specs: dict[str, KnobSpec] | None = None) -> None:
        """Under the lock: takes Triton's config as the truth for the knob values."""
        self._config = config
        if specs is not None:
            self._specs = specs
        self._values = {name: value for name, value in model_config.knobs_of(config).items() if name in self._specs}
        first = (config.get("input") or [{}])[0]
        self._identity = {
            "pid": os.getpid(),
            "model": self._model,
            "device": self._device,
            "kind": "triton",
            "input": {
                "shape": [int(dim) for dim in first.get("dims") or ()],
                "dtype": str(first.get("data_type", "TYPE_FP32")).removeprefix("TYPE_"),
            },
        }

    # --- ControlHandler -------------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        with self._lock:
            knobs = {name: spec.to_wire(self._values[name]) for name, spec in self._specs.items()}
            restart_only = {"device": self._device, "model": self._model, "triton": self._client.url}
            return message("hello", worker=dict(self._identity), knobs=knobs, restart_only=restart_only)

    def apply(self, knobs: dict[str, Any]) -> dict[str, int]:
        """One reload with every change, or none: see the module docstring."""
        with self._reloading:
            with self._lock:
                checked = validate_changes(self._specs, knobs, ("device", "model", "triton"))
                config = model_config.for_load(self._config, checked)
            try:
                self._client.load(self._model, config)
            except TritonError as exc:
                self._reread()
                raise KnobError(f"Triton did not load the new config: {exc}; the model keeps its previous config") from None
            self._reread()
            with self._lock:
                applied = {name: self._values.get(name, value) for name, value in checked.items()}
            self._remember(applied)
            self._await_polls(SETTLE_POLLS)
            return applied

    def _await_polls(self, count: int) -> None:
        """Until `count` more polls have been taken (at most a few seconds; none if no poll
        thread runs). The requests a reload held up complete as it ends; answering the set
        after they are counted charges them to the change, not to the trial of the new config."""
        with self._polled:
            target = self._polls + count
            self._polled.wait_for(lambda: self._polls >= target, timeout=(count + 2) * POLL_SECONDS)

    def _reread(self) -> None:
        try:
            config = self._client.model_config(self._model)
        except TritonError as exc:
            log.warning("cannot read the model's config back: %s", exc)
            return
        with self._lock:
            self._adopt(config)

    def accepted(self, knobs: dict[str, int]) -> None:
        """Writes the accepted knobs into the model's config.pbtxt when write-back is on, once
        Triton runs them (a report about values Triton no longer holds is refused)."""
        if self._write_back is None:
            return
        with self._lock:
            running, values = self._config, dict(self._values)
            ours = {name: value for name, value in knobs.items() if name in self._specs}
        if any(values.get(name) != value for name, value in ours.items()):
            raise KnobError(f"not written back: Triton runs {values}, not the accepted {ours}")
        try:
            if self._write_back.write_back(ours, running):
                log.info("wrote the accepted knobs %s to %s", ours, self._write_back.path)
        except WriteBackError as exc:
            raise KnobError(f"not written back: {exc}") from None

    # --- polling --------------------------------------------------------------------------------

    def _fetch(self) -> tuple[MetricsReading, dict[str, Any]]:
        return parse_metrics(self._client.metrics(), self._model), self._client.model_stats(self._model)

    def _take(self, reading: tuple[MetricsReading, dict[str, Any]]) -> None:
        metrics, stats = reading
        self._counters.update(raw_counters(metrics, stats))
        totals = self._counters.totals
        self._latency.update(self._clock(), totals["success"], totals["duration_us"], metrics.latency_quantiles_us)
        with self._lock:
            lanes = model_config.instances(self._config)
            self._snapshot = worker_stats(self._counters.totals, self._latency.snapshot(), metrics.pending, lanes)
        with self._polled:
            self._polls += 1
            self._polled.notify_all()
