"""`gputuned load --api openai`: streaming load for an OpenAI-compatible LLM server (vLLM).

Each request is a streamed completion (`POST /v1/completions`, `stream: true`) whose prompt
is a given number of token ids and whose output is a given number of tokens (`max_tokens`
with vLLM's `ignore_eos` and `min_tokens`, so a model that would stop early still produces
them all). Lengths follow the `lengths.py` option syntax. The prompts are slices of a pool of
tokens made once from random words through the server's own tokenizer (`POST /tokenize`),
each starting at a random offset, so prefix caching does not make every prompt free.

Per request it measures what LLM serving is judged by: the time to the first token (TTFT,
from the scheduled send time in open loop: no coordinated omission), the time per output
token after the first (TPOT), and whether both met their objectives; goodput counts the
requests that met both, per second, as vLLM's serving benchmark and DistServe count it.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from gputuned.lengths import Lengths
from gputuned.loadgen import LoadError, LoadPlan, LoadResult, LoadRun, client_session, drive
from gputuned.loadgen import main as load_main
from gputuned.performance import format_ms

WORDS_IN_POOL = 3000
DONE = b"data: [DONE]"


@dataclass(frozen=True)
class CompletionPlan(LoadPlan):
    prompt_tokens: Lengths = field(default_factory=lambda: Lengths(low=64, high=64))
    output_tokens: Lengths = field(default_factory=lambda: Lengths(low=128, high=128))
    slo_ttft: float | None = None  # seconds; None: goodput is not counted
    slo_tpot: float | None = None


@dataclass
class CompletionResult(LoadResult):
    ttfts: list[float] = field(default_factory=list)
    tpots: list[float] = field(default_factory=list)  # requests with more than one output token
    generated_tokens: int = 0
    prompt_tokens: int = 0
    met_objectives: int = 0  # requests within both objectives
    met_timeline: list[tuple[float, bool]] = field(default_factory=list)  # (perf_counter when done, met both) if asked

    def summary(self) -> dict[str, Any]:
        elapsed = self.elapsed or 1.0
        return {
            **super().summary(),
            "generated_tokens": self.generated_tokens,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens_per_second": self.generated_tokens / elapsed,
            "ttft_seconds": _quantiles(self.ttfts),
            "tpot_seconds": _quantiles(self.tpots),
            "goodput_per_second": self.met_objectives / elapsed,
            "met_objectives": self.met_objectives,
        }


def _quantiles(values: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(values)

    def at(q: float) -> float | None:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else None

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99)}


@dataclass
class _Server:
    base: str
    model: str
    outstanding: int = 0


class _CompletionRun(LoadRun):
    def __init__(self, session: aiohttp.ClientSession, targets: list[_Server], plan: CompletionPlan, pool: list[int]) -> None:
        super().__init__(session, targets, plan, CompletionResult())
        self.completion_plan = plan
        self.completions = self.result  # typed: CompletionResult
        self._pool = pool
        self._rng = random.Random(plan.seed)

    def _body(self, model: str) -> tuple[dict[str, Any], int]:
        plan, rng = self.completion_plan, self._rng
        length, output = plan.prompt_tokens.draw(rng), plan.output_tokens.draw(rng)
        start = rng.randrange(len(self._pool))
        prompt = [self._pool[(start + i) % len(self._pool)] for i in range(length)]
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": output,
            "min_tokens": output,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        return body, length

    async def send(self, target: _Server, scheduled: float) -> str | None:  # type: ignore[override]
        body, prompt_length = self._body(target.model)
        first: float | None = None
        usage: dict[str, Any] = {}
        async with self.session.post(f"{target.base}/v1/completions", json=body) as response:
            if response.status != 200:
                await response.read()
                return f"http_{response.status}"
            async for line in response.content:
                if not line.startswith(b"data: ") or line.strip() == DONE:
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return "stream_error"
                if first is None and any(choice.get("text") for choice in chunk.get("choices") or ()):
                    first = time.perf_counter()
                usage = chunk.get("usage") or usage
        done = time.perf_counter()
        generated = int(usage.get("completion_tokens") or 0)
        if first is None or generated < body["max_tokens"]:
            return "short_output"
        self.answered(target.base, scheduled)
        self._record(scheduled, first, done, generated, prompt_length)
        return None

    def _record(self, scheduled: float, first: float, done: float, generated: int, prompt_length: int) -> None:
        result, plan = self.completions, self.completion_plan
        assert isinstance(result, CompletionResult)
        ttft = first - scheduled
        tpot = (done - first) / (generated - 1) if generated > 1 else None
        result.ttfts.append(ttft)
        if tpot is not None:
            result.tpots.append(tpot)
        result.generated_tokens += generated
        result.prompt_tokens += prompt_length
        if plan.slo_ttft is not None and plan.slo_tpot is not None:
            met = ttft <= plan.slo_ttft and (tpot is None or tpot <= plan.slo_tpot)
            result.met_objectives += met
            if plan.timeline:
                result.met_timeline.append((done, met))


async def _discover(session: aiohttp.ClientSession, url: str, model: str | None) -> str:
    try:
        async with session.get(f"{url}/v1/models") as response:
            if response.status != 200:
                raise LoadError(f"{url}/v1/models answered HTTP {response.status}: is this an OpenAI-compatible server?")
            listing = await response.json()
    except aiohttp.ClientError as exc:
        raise LoadError(f"cannot reach {url}: {exc}") from None
    names = [entry.get("id") for entry in listing.get("data") or ()]
    if model is not None:
        if model not in names:
            raise LoadError(f"{url} serves no model {model!r}; it serves {', '.join(map(str, names)) or 'none'}")
        return model
    if not names:
        raise LoadError(f"{url} serves no model")
    return str(names[0])


async def _token_pool(session: aiohttp.ClientSession, server: _Server, seed: int) -> list[int]:
    """Token ids of random words, through the server's tokenizer."""
    rng = random.Random(seed)
    text = " ".join(f"{rng.choice('bcdfghklmnprstvz')}{rng.choice('aeiou')}{rng.randrange(1000)}" for _ in range(WORDS_IN_POOL))
    try:
        async with session.post(f"{server.base}/tokenize", json={"model": server.model, "prompt": text}) as response:
            answer = await response.json()
    except (aiohttp.ClientError, ValueError) as exc:
        raise LoadError(f"{server.base}/tokenize failed: {exc}") from None
    tokens = answer.get("tokens") if isinstance(answer, dict) else None
    if not tokens:
        raise LoadError(f"{server.base}/tokenize gave no tokens: {str(answer)[:200]}")
    return [int(token) for token in tokens]


async def run_completion_load(plan: CompletionPlan, progress: Any = None) -> CompletionResult:
    async with client_session(plan) as session:
        servers = [_Server(url, await _discover(session, url, plan.model)) for url in plan.urls]
        pool = await _token_pool(session, servers[0], plan.seed)
        result = await drive(_CompletionRun(session, servers, plan, pool), progress)
        assert isinstance(result, CompletionResult)
        return result


def format_summary(summary: dict[str, Any], plan: CompletionPlan) -> str:
    ttft, tpot = summary["ttft_seconds"], summary["tpot_seconds"]
    lines = [
        f"requests: {summary['sent']} sent, {summary['ok']} ok, {summary['errors']} failed {summary['errors_by_kind'] or ''}".rstrip(),
        f"tokens: {summary['output_tokens_per_second']:.1f} output tokens/s "
        f"({summary['generated_tokens']} out, {summary['prompt_tokens']} in) over {summary['elapsed_seconds']:.1f} s",
        f"TTFT: p50 {format_ms(ttft['p50'])}, p99 {format_ms(ttft['p99'])}; TPOT: p50 {format_ms(tpot['p50'])}, p99 {format_ms(tpot['p99'])}",
    ]
    if plan.slo_ttft is not None and plan.slo_tpot is not None:
        lines.append(
            f"goodput: {summary['goodput_per_second']:.2f} requests/s within TTFT {format_ms(plan.slo_ttft)} and TPOT "
            f"{format_ms(plan.slo_tpot)} ({summary['met_objectives']} of {summary['ok']})"
        )
    return "\n".join(lines)


def main(plan: CompletionPlan, as_json: bool) -> int:
    return load_main(plan, as_json, run_completion_load, lambda summary: format_summary(summary, plan))
