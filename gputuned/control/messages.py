"""The shapes of what travels between the rooms: hello, stats, status and decisions, typed.

`protocol.py` frames and validates each message; this module declares what a message's
body holds, once, for every producer (the built-in worker, the agent, the Triton adapter)
and every reader (the supervisor, the window arithmetic, the collectors, the status
report). Stats are cumulative from the worker's start; every field is optional, because a
server embedding the agent may report only some of them. `read_stats` is the one check a
stats report goes through when it arrives: what is missing or malformed is left out, so
nothing after it validates again.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypedDict, cast, get_type_hints


class KnobWire(TypedDict, total=False):
    """A knob as a worker declares it in its hello (`KnobSpec.to_wire`)."""

    type: Literal["int"]
    value: int
    min: int
    max: int
    live: bool
    description: str
    title: str  # absent from workers built before the catalogue: the daemon takes the catalogue's
    unit: str


class WorkerIdentity(TypedDict, total=False):
    pid: int
    kind: str  # builtin, agent, triton, vllm
    model: str
    device: str
    input: dict[str, Any]
    note: str  # what limits this worker's tuning, for the operator (e.g. knobs read-only, and why)


class HistogramReport(TypedDict):
    """A cumulative histogram in Prometheus form: `cumulative[i]` observations at or below
    `bounds[i]`, the last one (+Inf) all of them."""

    bounds: list[float]
    cumulative: list[int]
    sum: float
    count: int


class StatsReport(TypedDict, total=False):
    """A worker's cumulative stats (the body of a stats message)."""

    requests: int  # received, whatever their outcome
    completed: int  # answered: outcome ok
    failed: int  # the server's fault: the only outcome held against a trial
    rejected: int  # the client's mistake
    refused: int  # not taken now: queue full, not ready, draining
    aborted: int  # cancelled by the client, or the client went away (a generative server's abort): no one's fault
    oom: int  # batches that ran out of memory
    batches: int
    pool_hits: int
    pool_misses: int
    h2d_bytes: int
    lane_busy_seconds: float  # summed over lanes
    # A variable-length model's: its requests' own tokens computed, and the padding computed with them.
    tokens: int
    padding_tokens: int
    queue_depth: int  # a gauge: items waiting now
    lanes: int  # a gauge: lanes running now
    latency_seconds: HistogramReport  # end to end
    batch_size: HistogramReport
    # Generative (LLM) workers:
    prompt_tokens: int
    generation_tokens: int
    preemptions: int  # sequences preempted (their KV cache given up, recomputed later)
    running: int  # a gauge: sequences running now
    kv_cache_usage: float  # a gauge: the share of the KV cache in use, 0..1
    ttft_seconds: HistogramReport  # time to first token, per request
    tpot_seconds: HistogramReport  # time per output token after the first, per request
    itl_seconds: HistogramReport  # inter-token latency, per token
    queue_seconds: HistogramReport  # time waiting before the first step, per request


HistogramField = Literal["latency_seconds", "batch_size", "ttft_seconds", "tpot_seconds", "itl_seconds", "queue_seconds"]
# The fields only a generative (LLM) server reports: tokens, its scheduler and per-token latency.
GENERATIVE_STATS = (
    "aborted",
    "prompt_tokens",
    "generation_tokens",
    "preemptions",
    "running",
    "kv_cache_usage",
    "ttft_seconds",
    "tpot_seconds",
    "itl_seconds",
    "queue_seconds",
)
# The fields only a variable-length model's worker reports.
TOKEN_STATS = ("tokens", "padding_tokens")
# The stats fields that are plain numbers, and those that are histograms.
STATS_HISTOGRAMS = tuple(name for name, kind in get_type_hints(StatsReport).items() if kind is HistogramReport)
STATS_NUMBERS = tuple(name for name in get_type_hints(StatsReport) if name not in STATS_HISTOGRAMS)


class Hello(TypedDict, total=False):
    worker: WorkerIdentity
    knobs: dict[str, KnobWire]
    restart_only: dict[str, str]


class WorkerStatusBody(TypedDict):
    """What a worker answers to `status`: who it is and its knobs now."""

    worker: WorkerIdentity
    knobs: dict[str, int]


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_histogram(value: object) -> HistogramReport | None:
    """The one histogram check: increasing bounds, one more cumulative count than bounds,
    counts that never fall, and a numeric sum; None for anything else."""
    if not isinstance(value, Mapping):
        return None
    bounds, cumulative, total = value.get("bounds"), value.get("cumulative"), value.get("sum")
    if not (isinstance(bounds, list) and isinstance(cumulative, list) and len(cumulative) == len(bounds) + 1 and _number(total)):
        return None
    if not all(_number(v) for v in bounds) or any(later <= earlier for earlier, later in itertools.pairwise(bounds)):
        return None
    if not all(_number(v) and v >= 0 for v in cumulative) or any(
        later < earlier for earlier, later in itertools.pairwise(cumulative)
    ):
        return None
    count = value.get("count")
    return HistogramReport(
        bounds=[float(b) for b in bounds],
        cumulative=[int(c) for c in cumulative],
        sum=float(cast(float, total)),
        count=int(cast(int, count)) if _number(count) else int(cumulative[-1]),
    )


def stats_number(report: StatsReport, name: str) -> float | None:
    """A numeric field of a checked report (one of STATS_NUMBERS); None where the worker does not report it."""
    value = cast(Mapping[str, object], report).get(name)
    return float(value) if isinstance(value, (int, float)) else None


def read_stats(raw: Mapping[str, Any]) -> StatsReport:
    """A received stats body as a StatsReport: the fields that are well formed, the rest left out."""
    report: dict[str, Any] = {name: raw[name] for name in STATS_NUMBERS if _number(raw.get(name))}
    for name in STATS_HISTOGRAMS:
        histogram = read_histogram(raw.get(name))
        if histogram is not None:
            report[name] = histogram
    return cast(StatsReport, report)


class Action(enum.StrEnum):
    """What the guard decided. The knob actions concern one knob; SHIFT and CONVERGE concern
    the workload and the search as a whole, and are recorded under the knob `*`."""

    APPLY = "apply"  # a change put on trial
    KEEP = "keep"  # a trial's change kept
    REVERT = "revert"  # a trial's change undone
    REFUSE = "refuse"  # the worker refused the change
    RECOMMEND = "recommend"  # recommend mode: what auto mode would have tried
    SHIFT = "shift"  # the workload moved: exploring again
    CONVERGE = "converge"  # exploring stopped paying: no explore move until a shift or resume


KNOB_ACTIONS = (Action.APPLY, Action.KEEP, Action.REVERT, Action.REFUSE, Action.RECOMMEND)
WORKLOAD_ACTIONS = (Action.SHIFT, Action.CONVERGE)
ALL_KNOBS = "*"  # the knob a workload action is recorded under


class WindowSummary(TypedDict):
    """A measured window as a decision records it."""

    goodput: float
    throughput: float
    arrival: float
    p99_ms: float | None
    failed: int
    oom: int
    mean_batch: float
    busy: float
    in_system: float
    items_per_request: float
    sm_active: float | None  # share of the GPU's SMs busy (GPM)
    watts: float | None  # GPU energy attributed to the worker per second
    joules_per_request: float | None


@dataclass(frozen=True)
class Evidence:
    """How a keep or revert was judged: on which metric, over how many windows, against what.

    `windows` counts the measured windows compared: 2 for a baseline against one trial
    window, more when the verdict was within the noise and the settings were interleaved
    (`interleaved` true). `gain` is the trial's relative change of `metric` (the mean of the
    interleaved pairs), `bar` what it had to beat, `noise` the window-to-window noise the
    bar was judged against. None where the decision did not get that far (a harm check, a
    back-off judged on p99 alone)."""

    metric: str | None = None  # goodput or goodput_per_watt ([tuning] objective), or throughput under overload
    windows: int | None = None
    interleaved: bool = False
    gain: float | None = None
    bar: float | None = None
    noise: float | None = None


@dataclass(frozen=True)
class Decision:
    """One line of the decision log (`decisions.jsonl`), of `gputuned status` and the page."""

    t: float  # wall clock, for people; decisions are taken on the monotonic clock
    knob: str
    action: Action
    old: int | None
    new: int | None
    reason: str
    baseline: WindowSummary | None = None
    trial: WindowSummary | None = None
    tuner: str | None = None  # the tuner that proposed the change; None for workload actions
    evidence: Evidence | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
