"""Knobs: the catalogue of every kind's tunable settings, and validation of a change (pure).

`CATALOGUE` declares each knob once: its name, title, unit, static bounds, whether it
applies live or only at a restart, what it does, and what it maps onto in each worker kind.
The built-in worker registers its knobs from it, the Triton adapter maps them, the tuners
and the guard refer to them by these declarations, and the dashboards, the status page and
docs/knobs.md read their titles and meanings from it. A new worker kind declares its knobs
here.

A worker declares the knobs it offers at run time (`KnobSpec`: bounds narrowed to the
machine, the current value) in its hello; the control protocol, `gputuned set` and the
tuners validate against that declaration. A server embedding the agent may declare knobs
the catalogue does not know: they arrive in its hello with their own title and meaning, and
are shown and tuned like the others. A change set is all-or-nothing: every value is checked
before any applies.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any


class KnobError(ValueError):
    """A refused knob change; the message says which knob and why."""


@dataclass(frozen=True, slots=True)
class KnobDef:
    """One knob of the catalogue: what it is, whatever worker offers it.

    `maximum` None: the bound depends on the machine (memory, cores) and each worker
    declares its own. `memory_bound`: raising it may run out of device memory, so an
    out-of-memory batch teaches the guard a ceiling for it. `kinds` maps each worker kind
    that offers the knob to what the knob is in that kind's own terms.
    """

    name: str
    title: str
    unit: str  # for people: "items", "µs", "MiB", "0/1"
    grafana_unit: str  # Grafana's unit id for its panels
    description: str
    minimum: int
    maximum: int | None
    kinds: Mapping[str, str]
    live: bool = True
    memory_bound: bool = False

    def spec(self, default: int, maximum: int | None = None) -> KnobSpec:
        """The spec a worker declares for this knob, with its own upper bound where the
        catalogue leaves it to the machine (or narrows it)."""
        upper = maximum if maximum is not None else self.maximum
        if upper is None:
            raise ValueError(f"{self.name}: the catalogue leaves its maximum to the worker; give one")
        return KnobSpec(self.name, default, self.minimum, upper, self.live, self.description, self.title, self.unit)


MAX_BATCH_SIZE = KnobDef(
    "max_batch_size",
    "Max batch size",
    "items",
    "short",
    "The most items the batcher joins into one batch.",
    1,
    512,
    {"builtin": "the dynamic batcher's cap", "triton": "the model config's max_batch_size (dynamic batching on)"},
    memory_bound=True,
)
MAX_QUEUE_DELAY_US = KnobDef(
    "max_queue_delay_us",
    "Max queue delay",
    "µs",
    "µs",
    "How long the oldest request waits for its batch to fill.",
    0,
    1_000_000,
    {"builtin": "the dynamic batcher's wait", "triton": "dynamic_batching.max_queue_delay_microseconds"},
)
MAX_BATCH_TOKENS = KnobDef(
    "max_batch_tokens",
    "Batch token budget",
    "tokens",
    "short",
    "The most tokens a batch of a variable-length model computes, its padding included "
    "(items x its longest request); a request over it runs alone.",
    1,
    1 << 20,
    {"builtin": "the dynamic batcher's token budget (variable-length models)"},
    memory_bound=True,
)
LENGTH_BUCKET = KnobDef(
    "length_bucket",
    "Length bucket",
    "tokens",
    "short",
    "Width of the length buckets a variable-length model's requests wait in: a batch takes "
    "requests of one bucket and is padded to its longest. Narrow: little padding, slower "
    "to fill; wide: full batches, more padding.",
    1,
    None,
    {"builtin": "the dynamic batcher's length buckets (variable-length models), up to the longest sequence"},
)
STREAMS = KnobDef(
    "streams",
    "Lanes",
    "lanes",
    "short",
    "Batches run at once: execution lanes, a CUDA stream each on a GPU, a thread each on the CPU.",
    1,
    16,
    {"builtin": "execution lanes", "triton": "the count of every instance_group entry (model instances per device)"},
)
POOL_MB = KnobDef(
    "pool_mb",
    "Pool size",
    "MiB",
    "decmbytes",
    "Pinned (GPU) or preallocated (CPU) input buffer pool; 0 allocates each batch afresh.",
    0,
    None,
    {"builtin": "the input buffer pool, up to half the free memory"},
)
INTRA_OP_THREADS = KnobDef(
    "intra_op_threads",
    "Threads per lane",
    "threads",
    "short",
    "torch intra-op threads per lane; offered on the CPU only, up to the worker's CPUs.",
    1,
    None,
    {"builtin": "torch.set_num_threads in each lane"},
)
SCHED_BATCH = KnobDef(
    "sched_batch",
    "SCHED_BATCH",
    "0/1",
    "short",
    "1: the worker's threads run under Linux's SCHED_BATCH, handing batches over without preempting.",
    0,
    1,
    {"builtin": "the scheduling policy of the worker's threads (Linux)"},
)
INTEROP_THREADS = KnobDef(
    "interop_threads",
    "Inter-op threads",
    "threads",
    "short",
    "torch inter-op threads; torch fixes them once it has run, so they change only at a restart.",
    1,
    None,
    {"builtin": "torch.set_num_interop_threads at start"},
    live=False,
)

MAX_NUM_ACTIVE_SEQS = KnobDef(
    "max_num_active_seqs",
    "Admission cap",
    "sequences",
    "short",
    "The most sequences the scheduler runs at once; the others wait. Lowering it preempts "
    "nothing: running sequences finish, and no new one starts until they are under the cap.",
    1,
    None,
    {"vllm": "Scheduler.max_num_active_reqs (--max-num-active-seqs), up to --max-num-seqs"},
)
MAX_NUM_SCHEDULED_TOKENS = KnobDef(
    "max_num_scheduled_tokens",
    "Step token budget",
    "tokens",
    "short",
    "The most tokens one engine step schedules: running sequences' next tokens first, then "
    "prompt chunks of waiting ones. Never below the admission cap (a token for each running "
    "sequence), nor below max_model_len where chunked prefill is off (a whole prompt).",
    1,
    None,
    {"vllm": "Scheduler.max_num_scheduled_tokens, up to --max-num-batched-tokens"},
)
MAX_NUM_SEQS = KnobDef(
    "max_num_seqs",
    "Sequence slots",
    "sequences",
    "short",
    "The sequences the model runner has buffers (and CUDA graphs) for, sized at start; the admission cap's ceiling.",
    1,
    None,
    {"vllm": "--max-num-seqs"},
    live=False,
)

CATALOGUE: Mapping[str, KnobDef] = {
    knob.name: knob
    for knob in (
        MAX_BATCH_SIZE,
        MAX_QUEUE_DELAY_US,
        MAX_BATCH_TOKENS,
        LENGTH_BUCKET,
        STREAMS,
        POOL_MB,
        INTRA_OP_THREADS,
        SCHED_BATCH,
        INTEROP_THREADS,
        MAX_NUM_ACTIVE_SEQS,
        MAX_NUM_SCHEDULED_TOKENS,
        MAX_NUM_SEQS,
    )
}


def memory_bound(name: str) -> bool:
    """Whether raising this knob may run out of memory (False for knobs the catalogue does not know)."""
    knob = CATALOGUE.get(name)
    return knob is not None and knob.memory_bound


@dataclass(frozen=True, slots=True)
class KnobSpec:
    """A knob as one worker offers it: its bounds there, whether live, and how to show it."""

    name: str
    default: int
    minimum: int
    maximum: int
    live: bool = True
    description: str = ""
    title: str = ""
    unit: str = ""

    def to_wire(self, value: int) -> dict[str, Any]:
        return {
            "type": "int",
            "value": value,
            "min": self.minimum,
            "max": self.maximum,
            "live": self.live,
            "description": self.description,
            "title": self.title,
            "unit": self.unit,
        }

    @classmethod
    def from_wire(cls, name: str, wire: Mapping[str, Any]) -> KnobSpec:
        """The spec a worker declared in its hello (the inverse of to_wire). A worker built
        before knobs carried a title and a unit is shown with the catalogue's, if it knows
        the knob."""
        known = CATALOGUE.get(name)
        return cls(
            name,
            wire["value"],
            wire["min"],
            wire["max"],
            wire["live"],
            str(wire.get("description") or (known.description if known else "")),
            str(wire.get("title") or (known.title if known else name)),
            str(wire.get("unit") or (known.unit if known else "")),
        )

    def check(self, value: Any) -> int:
        """The value as an int, or KnobError saying why it is refused."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise KnobError(f"{self.name}={value!r} is not an integer")
        if not self.live:
            raise KnobError(f"{self.name} applies only at restart; restart the worker with the new value")
        if value < self.minimum:
            raise KnobError(f"{self.name}={value} is below its minimum {self.minimum}")
        if value > self.maximum:
            raise KnobError(f"{self.name}={value} is above its maximum {self.maximum}")
        return value


def validate_changes(
    specs: Mapping[str, KnobSpec], changes: Mapping[str, Any], restart_only: Collection[str] = ()
) -> dict[str, int]:
    """Checks every requested change; returns them as ints, or raises one KnobError naming all problems.

    `restart_only` names settings that are not knobs at all (the device, the model): a
    change to one is refused with that reason rather than as an unknown knob.
    """
    if not changes:
        raise KnobError("no knobs given")
    problems = []
    checked: dict[str, int] = {}
    for name, value in changes.items():
        spec = specs.get(name)
        if spec is None:
            if name in restart_only:
                problems.append(f"{name} applies only at restart; restart the worker with the new value")
            else:
                problems.append(f"unknown knob {name!r}; known knobs: {', '.join(sorted(specs))}")
            continue
        try:
            checked[name] = spec.check(value)
        except KnobError as exc:
            problems.append(str(exc))
    if problems:
        raise KnobError("; ".join(problems))
    return checked


def parse_assignments(pairs: list[str]) -> dict[str, int]:
    """'KNOB=VALUE' command-line words -> {knob: int}; raises KnobError naming a bad word."""
    changes: dict[str, int] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise KnobError(f"{pair!r} is not KNOB=VALUE")
        try:
            changes[name] = int(text)
        except ValueError:
            raise KnobError(f"{name}={text!r} is not an integer") from None
    return changes
