"""`gputuned load`: a load generator for any Open Inference Protocol v2 endpoint.

Closed loop (N clients, each sending its next request when the last one returns) or open
loop (Poisson arrivals at a rate; latency counts from the scheduled send time, so a
slow server cannot hide its queueing: no coordinated omission). Always bounded by a
request count and a duration. Requests use the binary tensor extension with random inputs
made once (once per length for a model that takes sequences: token ids, a mask of ones,
token types of zeros, each request's length drawn from `--lengths`), so the client spends
its CPU on sending, not on encoding.

Several base URLs (the workers of a host) are loaded as one: each request goes to the
target with the fewest requests outstanding (ties in turn), as a least-connections load
balancer would spread them, and the result counts what each target answered.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TextIO

import aiohttp

from gputuned.datatypes import DATATYPES
from gputuned.lengths import Lengths

MAX_IN_FLIGHT = 4096  # open loop: beyond this many outstanding requests, arrivals count as errors
# A pooled connection idle this long is closed by the client, well before the server's own
# keep-alive closes it (uvicorn's default, vLLM's server's, is 5 s; aiohttp's own 15 s):
# a request sent on a connection the server is closing that moment fails as disconnected.
IDLE_CONNECTION_SECONDS = 2.0
MAX_FAILURES_KEPT = 100_000
# A closed-loop client waits this long after a failure, as real clients back off, so that a
# refused connection does not become a busy loop that starves the server being restarted.
FAILURE_PAUSE_SECONDS = 0.02


class LoadError(Exception):
    """The target cannot be load-tested (unreachable, no model, unknown dtype)."""


@dataclass(frozen=True)
class LoadPlan:
    url: str  # base URL, e.g. http://127.0.0.1:8000
    model: str | None = None
    concurrency: int | None = 8  # closed loop when set
    rate: float | None = None  # open loop (requests/s) when set
    requests: int = 1000
    duration: float = 60.0
    batch: int = 1  # items per request
    seed: int = 0
    timeline: bool = False  # keep (completion time, latency) of every request, for curves over time
    stop: threading.Event | None = None  # set from another thread to end the load early
    more_urls: tuple[str, ...] = ()  # further base URLs serving the same model, loaded together with `url`
    lengths: Lengths | None = None  # a variable-length model's sequence lengths, one drawn per request
    # Pad each request to this length, with zeros and the attention mask, as clients of a
    # server that takes one fixed length do; its tokens are still its own length's. 0: no padding.
    pad_to: int = 0

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.more_urls)


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)  # (perf_counter when sent, kind), the first 10,000
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (perf_counter when done, latency) if asked
    ok_by_target: Counter[str] = field(default_factory=Counter)  # base URL -> requests it answered
    tokens: list[int] = field(default_factory=list)  # a variable-length model's: tokens of each answered request, as latencies
    elapsed: float = 0.0

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "ok": self.ok,
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors),
            "elapsed_seconds": self.elapsed,
            "ok_by_target": dict(self.ok_by_target),
            "throughput_per_second": self.ok / self.elapsed if self.elapsed else 0.0,
            "tokens_per_second": sum(self.tokens) / self.elapsed if self.elapsed and self.tokens else None,
            "latency_seconds": {
                "p50": self.percentile(50),
                "p95": self.percentile(95),
                "p99": self.percentile(99),
                "mean": sum(self.latencies) / len(self.latencies) if self.latencies else None,
            },
        }


async def _discover(session: aiohttp.ClientSession, url: str, model: str | None) -> tuple[str, dict[str, Any]]:
    try:
        if model is None:
            async with session.post(f"{url}/v2/repository/index") as response:
                if response.status != 200:
                    raise LoadError(
                        f"{url} does not list its models (repository index: HTTP {response.status} "
                        f"{(await response.text())[:200]}); name the model with --model"
                    )
                index = await response.json(content_type=None)
            ready = [entry["name"] for entry in index if entry.get("state", "READY") == "READY"]
            if not ready:
                raise LoadError(f"{url} serves no model")
            model = ready[0]
        async with session.get(f"{url}/v2/models/{model}") as response:
            if response.status != 200:
                raise LoadError(f"{url} has no model {model!r}: HTTP {response.status} {await response.text()}")
            return model, await response.json()
    except aiohttp.ClientError as exc:
        raise LoadError(f"cannot reach {url}: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:  # an answer that is not the v2 protocol's JSON
        raise LoadError(f"{url} does not answer as a v2 inference server: {exc!r}") from None


def sequence_inputs(metadata: dict[str, Any]) -> bool:
    """Whether the model takes sequences: an input with a variable dimension past the batch."""
    return any(-1 in spec["shape"][1:] for spec in metadata["inputs"])


def _values(name: str, datatype: str, shape: list[int], real: int, rng: Any) -> Any:
    """Random values for an input: for integers, token ids (a mask of ones, token types of
    zeros); past `real` tokens of the last dimension (padding), zeros."""
    import numpy as np

    numpy = DATATYPES[datatype].numpy
    if not datatype.startswith(("INT", "UINT")):
        return rng.random(shape).astype(numpy)
    low, high = (1, 2) if "mask" in name else (0, 1) if "type" in name else (1, 1000)
    values = rng.integers(low, high, shape).astype(numpy)
    if real < shape[-1]:
        values[..., real:] = 0
    return np.ascontiguousarray(values)


def build_request(
    metadata: dict[str, Any], batch: int, seed: int, length: int = 0, real: int = 0
) -> tuple[bytes, dict[str, str]]:
    """One binary-extension request body (random inputs of the model's shapes, `length`
    tokens long where the model takes sequences, the tokens past `real` padding) and its headers."""
    import numpy as np  # the load generator works without the worker extra; numpy comes with it

    rng = np.random.default_rng(seed)
    inputs, blobs = [], []
    for spec in metadata["inputs"]:
        if spec["datatype"] not in DATATYPES or spec["datatype"] == "BF16":
            raise LoadError(f"input datatype {spec['datatype']} is not supported by the load generator")
        shape = [batch, *(length if d == -1 else d for d in spec["shape"][1:])]
        if any(d < 1 for d in shape):
            raise LoadError(f"input {spec['name']} has shape {spec['shape']}: give --lengths for a model that takes sequences")
        blob = _values(spec["name"], spec["datatype"], shape, real or shape[-1], rng).tobytes()
        blobs.append(blob)
        parameters = {"binary_data_size": len(blob)}
        inputs.append({"name": spec["name"], "datatype": spec["datatype"], "shape": shape, "parameters": parameters})
    outputs = [{"name": output["name"], "parameters": {"binary_data": True}} for output in metadata["outputs"]]
    header = json.dumps({"inputs": inputs, "outputs": outputs}).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return header + b"".join(blobs), headers


@dataclass
class _Target:
    base: str
    infer_url: str
    body: bytes
    headers: dict[str, str]
    outstanding: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    by_length: dict[int, tuple[bytes, dict[str, str]]] = field(default_factory=dict)  # a sequence model's bodies


class LoadRun:
    """One load run: its clients (closed loop) or arrivals (open loop), bounded in count and
    time, over targets picked least-outstanding first. `one` sends a v2 inference request;
    other APIs (llmload.py) override it."""

    def __init__(self, session: aiohttp.ClientSession, targets: list[Any], plan: LoadPlan, result: LoadResult) -> None:
        self.session, self.targets, self.plan = session, targets, plan
        self._turn = 0
        self._lengths_rng = random.Random(plan.seed)
        self.result = result
        self.started = time.perf_counter()
        self.deadline = self.started + plan.duration

    def may_send(self) -> bool:
        stopped = self.plan.stop is not None and self.plan.stop.is_set()
        return not stopped and self.result.sent < self.plan.requests and time.perf_counter() < self.deadline

    def pick(self) -> Any:
        """The target with the fewest requests outstanding; ties go round in turn."""
        self._turn = (self._turn + 1) % len(self.targets)
        rotated = self.targets[self._turn :] + self.targets[: self._turn]
        return min(rotated, key=lambda target: target.outstanding)

    async def one(self, scheduled: float) -> bool:
        """Sends one request; False when it failed."""
        self.result.sent += 1
        sent = time.perf_counter()
        target = self.pick()
        target.outstanding += 1
        try:
            kind = await self.send(target, scheduled)
        except (TimeoutError, aiohttp.ClientError) as exc:
            kind = type(exc).__name__
        finally:
            target.outstanding -= 1
        if kind is None:
            return True
        self.result.errors[kind] += 1
        if len(self.result.failures) < MAX_FAILURES_KEPT:
            self.result.failures.append((sent, kind))
        return False

    async def send(self, target: _Target, scheduled: float) -> str | None:
        """One request to `target`, counted in the result when answered; the kind of failure, or None."""
        body, headers, tokens = self.body_for(target)
        async with self.session.post(target.infer_url, data=body, headers=headers) as response:
            await response.read()
            if response.status != 200:
                return f"http_{response.status}"
        self.answered(target.base, scheduled)
        if tokens:
            self.result.tokens.append(tokens)
        return None

    def body_for(self, target: _Target) -> tuple[bytes, dict[str, str], int]:
        """The next request's body, headers and tokens (0 for fixed shapes): at a length drawn
        from the plan's, for a model that takes sequences; each length's body built once."""
        lengths = self.plan.lengths
        if lengths is None:
            return target.body, target.headers, 0
        length = lengths.draw(self._lengths_rng)
        built = target.by_length.get(length)
        if built is None:
            sent = self.plan.pad_to or length
            built = build_request(target.metadata, self.plan.batch, self.plan.seed + length, sent, length)
            target.by_length[length] = built
        return built[0], built[1], length * self.plan.batch

    def answered(self, base: str, scheduled: float) -> None:
        done = time.perf_counter()
        self.result.ok += 1
        self.result.ok_by_target[base] += 1
        self.result.latencies.append(done - scheduled)
        if self.plan.timeline:
            self.result.timeline.append((done, done - scheduled))

    async def closed_loop(self, clients: int) -> None:
        async def client() -> None:
            while self.may_send():
                if not await self.one(time.perf_counter()):
                    await asyncio.sleep(FAILURE_PAUSE_SECONDS)

        await asyncio.gather(*(client() for _ in range(clients)))

    async def open_loop(self, rate: float) -> None:
        rng = random.Random(self.plan.seed)
        in_flight: set[asyncio.Task[None]] = set()
        next_at = time.perf_counter()
        while self.may_send():
            next_at += rng.expovariate(rate)
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= MAX_IN_FLIGHT:
                self.result.sent += 1
                self.result.errors["client_overloaded"] += 1
                continue
            task: asyncio.Task[Any] = asyncio.create_task(self.one(next_at))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)


async def _progress(run: LoadRun, stream: TextIO) -> None:
    while True:
        await asyncio.sleep(0.5)
        result = run.result
        elapsed = time.perf_counter() - run.started
        stream.write(
            f"\r{elapsed:6.1f}s  sent {result.sent}  ok {result.ok}  errors {sum(result.errors.values())}  "
            f"{result.ok / elapsed if elapsed else 0:8.1f}/s  p99 {_ms(result.percentile(99))} "
        )
        stream.flush()


async def run_load(plan: LoadPlan, progress: TextIO | None = None) -> LoadResult:
    async with client_session(plan) as session:
        targets = []
        for url in plan.urls:
            model, metadata = await _discover(session, url, plan.model)
            if not plan.pad_to and sequence_inputs(metadata) != (plan.lengths is not None):
                wanted = "give --lengths" if plan.lengths is None else "--lengths is for models that take sequences"
                raise LoadError(
                    f"model {model} at {url} takes {'sequences' if plan.lengths is None else 'fixed shapes'}: {wanted}"
                )
            body, headers = (b"", {}) if plan.lengths is not None else build_request(metadata, plan.batch, plan.seed)
            targets.append(_Target(url, f"{url}/v2/models/{model}/infer", body, headers, metadata=metadata))
        return await drive(LoadRun(session, targets, plan, LoadResult()), progress)


def client_session(plan: LoadPlan) -> aiohttp.ClientSession:
    """A session with no connection limit (the plan's clients are the limit), a request
    timeout of the whole run's length, and idle connections closed after IDLE_CONNECTION_SECONDS."""
    timeout = aiohttp.ClientTimeout(total=max(plan.duration, 30.0))
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=IDLE_CONNECTION_SECONDS)
    return aiohttp.ClientSession(timeout=timeout, connector=connector)


async def drive(run: LoadRun, progress: TextIO | None) -> LoadResult:
    """Runs the load, closed or open loop as its plan says, with a progress line when asked."""
    plan = run.plan
    reporter = asyncio.create_task(_progress(run, progress)) if progress is not None else None
    try:
        if plan.rate is not None:
            await run.open_loop(plan.rate)
        else:
            await run.closed_loop(plan.concurrency or 1)
    finally:
        if reporter is not None and progress is not None:
            reporter.cancel()
            progress.write("\n")
    run.result.elapsed = time.perf_counter() - run.started
    return run.result


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


def format_summary(summary: dict[str, Any]) -> str:
    latency = summary["latency_seconds"]
    lines = [
        f"requests: {summary['sent']} sent, {summary['ok']} ok, {summary['errors']} errors {summary['errors_by_kind'] or ''}".rstrip(),
        f"throughput: {summary['throughput_per_second']:.1f} requests/s over {summary['elapsed_seconds']:.1f} s"
        + (f", {summary['tokens_per_second']:.0f} tokens/s" if summary.get("tokens_per_second") else ""),
        f"latency: p50 {_ms(latency['p50'])}, p95 {_ms(latency['p95'])}, p99 {_ms(latency['p99'])}",
    ]
    if len(summary["ok_by_target"]) > 1:
        lines.append("answered: " + ", ".join(f"{url} {count}" for url, count in sorted(summary["ok_by_target"].items())))
    return "\n".join(lines)


def main(
    plan: LoadPlan,
    as_json: bool,
    runner: Callable[..., Coroutine[Any, Any, LoadResult]] = run_load,
    formatter: Callable[[dict[str, Any]], str] = format_summary,
) -> int:
    """`gputuned load`: runs `plan` with `runner` (v2 inference by default) and prints its
    summary, as `formatter` writes it or as JSON; exit 0 when any request succeeded."""
    progress = sys.stderr if sys.stderr.isatty() and not as_json else None
    try:
        result = asyncio.run(runner(plan, progress))
    except LoadError as exc:
        print(f"gputuned load: {exc}", file=sys.stderr)
        return 2
    summary = result.summary()
    print(json.dumps(summary) if as_json else formatter(summary))
    return 0 if result.ok else 1
