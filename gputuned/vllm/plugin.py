"""gputuned's vLLM plugin: the scheduler's live knobs on a control socket in the engine core.

vLLM loads its `vllm.general_plugins` entry points in each of its processes (the API
server, the engine core, the model workers), sometimes more than once. `register` does
nothing unless GPUTUNED_VLLM_SOCKET names a socket path, is idempotent, and only wraps two
methods of vLLM's `Scheduler`, which only the engine core builds:

- its constructor, so that the first scheduler of the process serves gputuned's control
  protocol on that socket (mode 0600; 0660 for GPUTUNED_VLLM_SOCKET_GROUP when set; peers
  checked by their credentials) from a thread of its own;
- `schedule`, which runs each engine step under a lock that a set takes too: a set lands
  between two steps, whole, and is acknowledged once it is in force for the next one.

The live knobs are the two the scheduler reads afresh at every step: its admission cap
(`max_num_active_reqs`, vLLM's --max-num-active-seqs) and its step token budget
(`max_num_scheduled_tokens`). Both are bounded above by the values the server started with
(buffers and CUDA graphs are sized for them at start) and the budget below by what the
scheduler needs: a token for each sequence the cap admits, and a whole prompt of
`max_model_len` where chunked prefill is off. Lowering the cap never preempts: running
sequences finish, and the scheduler admits no new one until they are under it.

A vLLM whose scheduler lacks these attributes (another version) or that runs several
engine cores (data parallel) is refused with a log line saying so, and serves no socket:
gputuned then monitors it untuned. This module imports only gputuned's control protocol
(it ships alone in a small wheel, `gputuned vllm-plugin`), and vLLM only inside `register`.
"""

from __future__ import annotations

import functools
import grp
import logging
import os
import threading
from pathlib import Path
from typing import Any

from gputuned.control.messages import StatsReport, WorkerIdentity, WorkerStatusBody
from gputuned.control.protocol import message
from gputuned.control.server import ControlServer, ServerThread
from gputuned.knobs import MAX_NUM_ACTIVE_SEQS, MAX_NUM_SCHEDULED_TOKENS, KnobError, KnobSpec, validate_changes

# A child of vLLM's own logger: its lines appear in vLLM's log, in its format.
log = logging.getLogger("vllm.plugins.gputuned")

SOCKET_ENV = "GPUTUNED_VLLM_SOCKET"
GROUP_ENV = "GPUTUNED_VLLM_SOCKET_GROUP"
CAP = MAX_NUM_ACTIVE_SEQS.name
BUDGET = MAX_NUM_SCHEDULED_TOKENS.name
# What the knobs are on vLLM's Scheduler (read afresh at every step in the versions known).
SCHEDULER_ATTRIBUTES = {CAP: "max_num_active_reqs", BUDGET: "max_num_scheduled_tokens"}
NEEDED_ATTRIBUTES = (*SCHEDULER_ATTRIBUTES.values(), "max_num_running_reqs", "max_model_len", "scheduler_config")
WRAPPED_MARK = "_gputuned_wrapped"


def register() -> None:
    """vLLM's general-plugin hook (see the module docstring)."""
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return
    try:
        from vllm.v1.core.sched.scheduler import Scheduler
    except ImportError as exc:
        log.error("gputuned: vLLM's scheduler cannot be imported (%s); its knobs are not served", exc)
        return
    if getattr(Scheduler, WRAPPED_MARK, False):
        return
    group_name = os.environ.get(GROUP_ENV) or None
    try:
        group = grp.getgrnam(group_name).gr_gid if group_name else None
    except KeyError:
        log.error("gputuned: %s=%s names no group; the knobs are not served", GROUP_ENV, group_name)
        return
    served = _Served(Path(path), group)
    original_init, original_schedule = Scheduler.__init__, Scheduler.schedule

    @functools.wraps(original_init)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        served.offer(self)

    @functools.wraps(original_schedule)
    def schedule(self: Any, *args: Any, **kwargs: Any) -> Any:
        with served.step_lock:
            return original_schedule(self, *args, **kwargs)

    Scheduler.__init__ = init
    Scheduler.schedule = schedule
    setattr(Scheduler, WRAPPED_MARK, True)


class _Served:
    """The one scheduler of this process whose knobs are served, once it is built."""

    def __init__(self, path: Path, group: int | None) -> None:
        self.path = path
        self.group = group
        self.step_lock = threading.Lock()
        self._thread: ServerThread | None = None

    def offer(self, scheduler: Any) -> None:
        if self._thread is not None:
            log.error("gputuned: a second scheduler in this process; only the first one's knobs are served")
            return
        refusal = unknown_scheduler(scheduler)
        if refusal:
            log.error("gputuned: %s; its knobs are not served, and gputuned monitors it untuned", refusal)
            return
        knobs = SchedulerKnobs(scheduler, self.step_lock)
        thread = ServerThread(ControlServer(self.path, knobs, group=self.group), "gputuned-vllm-control")
        try:
            thread.start()
        except OSError as exc:
            log.error("gputuned: cannot serve the knobs on %s: %s", self.path, exc)
            return
        self._thread = thread
        log.info("gputuned: serving the scheduler's knobs on %s", self.path)


def unknown_scheduler(scheduler: Any) -> str:
    """Why this scheduler's knobs cannot be served ("" when they can)."""
    missing = [name for name in NEEDED_ATTRIBUTES if not hasattr(scheduler, name)]
    if missing:
        return f"this vLLM's scheduler has no {', '.join(missing)} (a version gputuned does not know)"
    parallel = getattr(getattr(scheduler, "vllm_config", None), "parallel_config", None)
    if int(getattr(parallel, "data_parallel_size", 1) or 1) > 1:
        return "this vLLM runs several engine cores (data parallel); gputuned tunes a server with one"
    return ""


class SchedulerKnobs:
    """The control handler over one vLLM scheduler (see the module docstring)."""

    def __init__(self, scheduler: Any, step_lock: threading.Lock) -> None:
        self._scheduler = scheduler
        self._step_lock = step_lock
        config = scheduler.scheduler_config
        self._chunked_prefill = bool(getattr(config, "enable_chunked_prefill", True))
        slots = int(scheduler.max_num_running_reqs)
        self._specs: dict[str, KnobSpec] = {
            CAP: MAX_NUM_ACTIVE_SEQS.spec(int(scheduler.max_num_active_reqs), maximum=slots),
            BUDGET: MAX_NUM_SCHEDULED_TOKENS.spec(
                int(scheduler.max_num_scheduled_tokens), maximum=int(scheduler.max_num_scheduled_tokens)
            ),
        }
        cache = getattr(getattr(scheduler, "vllm_config", None), "cache_config", None)
        self._restart_only = {
            "max_num_seqs": str(slots),
            "max_num_batched_tokens": str(getattr(config, "max_num_batched_tokens", "")),
            "max_model_len": str(scheduler.max_model_len),
            "enable_chunked_prefill": str(self._chunked_prefill).lower(),
            "gpu_memory_utilization": str(getattr(cache, "gpu_memory_utilization", "")),
        }
        model = getattr(getattr(scheduler, "vllm_config", None), "model_config", None)
        self._identity: WorkerIdentity = {"pid": os.getpid(), "kind": "vllm", "model": str(getattr(model, "model", ""))}

    def values(self) -> dict[str, int]:
        return {name: int(getattr(self._scheduler, attribute)) for name, attribute in SCHEDULER_ATTRIBUTES.items()}

    def hello(self) -> dict[str, Any]:
        values = self.values()
        knobs = {name: spec.to_wire(values[name]) for name, spec in self._specs.items()}
        return message("hello", worker=dict(self._identity), knobs=knobs, restart_only=dict(self._restart_only))

    def apply(self, knobs: dict[str, Any]) -> dict[str, int]:
        """Both knobs, checked together, set between two steps (see the module docstring)."""
        checked = validate_changes(self._specs, knobs, self._restart_only)
        new = {**self.values(), **checked}
        if new[BUDGET] < new[CAP]:
            raise KnobError(f"{BUDGET}={new[BUDGET]} is below {CAP}={new[CAP]}: each running sequence needs a token per step")
        if not self._chunked_prefill and new[BUDGET] < int(self._scheduler.max_model_len):
            raise KnobError(
                f"{BUDGET}={new[BUDGET]} is below max_model_len={self._scheduler.max_model_len}, "
                "and chunked prefill is off: a whole prompt must fit one step"
            )
        with self._step_lock:
            for name, value in checked.items():
                setattr(self._scheduler, SCHEDULER_ATTRIBUTES[name], value)
        return checked

    def accepted(self, knobs: dict[str, int]) -> None:
        """Nothing to keep: vLLM has no config to write; the daemon re-applies the accepted
        knobs when the server starts again."""

    def stats(self) -> StatsReport:
        """None here: the adapter reads vLLM's own /metrics."""
        return {}

    def status(self) -> WorkerStatusBody:
        return {"worker": dict(self._identity), "knobs": self.values()}  # type: ignore[typeddict-item]
