"""The vLLM kind's pure parts: /metrics text captured from a real vLLM 0.32 under streaming
load, the goodput bound over its two latency distributions, the plugin's knob rules, the
plugin's wheel, and the load's length option."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gputuned.config import ConfigError, WorkerConfig, load_config
from gputuned.control.histogram import Histogram
from gputuned.daemon.launch import vllm_adapter_command, vllm_plugin_socket, worker_launch
from gputuned.knobs import KnobError
from gputuned.lengths import parse_lengths
from gputuned.performance import Counters, GenerativeObjectives, measure, met_generative, within_bound
from gputuned.vllm import wheel
from gputuned.vllm.plugin import SchedulerKnobs, unknown_scheduler
from gputuned.vllm.readings import raw_readings, worker_stats
from gputuned.vllm.server import VllmSpec, server_command, server_env

DATA = Path(__file__).parent / "data"
UNDER_LOAD = (DATA / "vllm-0.32-metrics-under-load.txt").read_text()
# vLLM 0.32's own buckets for the two per-request distributions.
TTFT_BOUNDS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
TPOT_BOUNDS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
OBJECTIVES = GenerativeObjectives(ttft=1.0, tpot=0.05)


def test_metrics_under_load_become_a_worker_report():
    counters, gauges = raw_readings(UNDER_LOAD)
    report = worker_stats(counters, gauges)
    assert report["completed"] == 155 and report["failed"] == 0 and report["aborted"] == 0
    assert report["requests"] == 155 + report["rejected"] + report["refused"]
    assert report["prompt_tokens"] == 11836 and report["generation_tokens"] == 14569
    assert report["running"] == 31 and report["queue_depth"] == 0 and 0 < report["kv_cache_usage"] < 1
    assert report["ttft_seconds"]["count"] == 186 and report["tpot_seconds"]["count"] == 155
    assert report["latency_seconds"]["count"] == 155, "the end-to-end latency is the worker's request latency"
    assert report["ttft_seconds"]["bounds"][:4] == [0.001, 0.005, 0.01, 0.02]


def test_a_restarted_vllm_continues_the_totals():
    counters, gauges = raw_readings(UNDER_LOAD)
    totals = Counters()
    totals.update(counters)
    totals.update({name: value / 2 for name, value in counters.items()})  # a restart, then half as much again
    report = worker_stats(totals.totals, gauges)
    assert report["completed"] == 155 + 77
    assert report["tpot_seconds"]["cumulative"] == sorted(report["tpot_seconds"]["cumulative"])


def test_the_window_of_a_generative_worker_counts_tokens_and_judges_ttft_and_tpot():
    counters, gauges = raw_readings(UNDER_LOAD)
    newer = worker_stats(counters, gauges)
    older = worker_stats(dict.fromkeys(counters, 0.0), gauges)
    window = measure(older, newer, 10.0, 0.1, generative=OBJECTIVES)
    assert window is not None and window.generation is not None
    assert window.generation.output_tokens_per_second == pytest.approx(1456.9)
    assert window.generation.ttft_p99 is not None and window.generation.tpot_p99 is not None
    over = [window.generation.ttft_over, window.generation.tpot_over]
    assert window.tail_ratio == max(over), "the worse objective"
    # The share of requests over each objective in units of the 1% a p99 allows: exact on a bound.
    tpot = newer["tpot_seconds"]
    share_over = 1 - within_bound(tpot, 0.05) / tpot["count"]
    assert window.generation.tpot_over == pytest.approx(share_over / 0.01)
    assert window.goodput <= window.throughput
    plain = measure(older, newer, 10.0, 0.1)
    assert plain is not None and plain.generation is None, "without objectives it is judged by request latency"


def _histogram(bounds: list[float], values: list[float]) -> dict:
    histogram = Histogram(bounds)
    for value in values:
        histogram.observe(value)
    return histogram.snapshot()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.0005, 12.0), st.floats(0.001, 3.0)), min_size=1, max_size=200),
    st.sampled_from([0.25, 0.3, 1.0, 2.0]),
    st.sampled_from([0.03, 0.05, 0.1]),
)
def test_goodput_never_counts_more_requests_than_met_both_objectives(requests, ttft_objective, tpot_objective):
    ttft = _histogram(TTFT_BOUNDS, [first for first, _ in requests])
    tpot = _histogram(TPOT_BOUNDS, [per_token for _, per_token in requests])
    objectives = GenerativeObjectives(ttft_objective, tpot_objective)
    truth = sum(first <= ttft_objective and per_token <= tpot_objective for first, per_token in requests)
    assert 0 <= met_generative(ttft, tpot, objectives) <= truth


def test_the_bound_is_exact_when_no_request_misses_both_and_low_when_misses_coincide():
    disjoint = [(0.05, 0.01)] * 6 + [(3.0, 0.01)] * 2 + [(0.05, 0.2)] * 2
    coinciding = [(0.05, 0.01)] * 6 + [(3.0, 0.2)] * 4
    for requests, expected in ((disjoint, 6), (coinciding, 2)):  # the truth: 6 both times
        ttft = _histogram(TTFT_BOUNDS, [first for first, _ in requests])
        tpot = _histogram(TPOT_BOUNDS, [per_token for _, per_token in requests])
        assert met_generative(ttft, tpot, OBJECTIVES) == expected
    ttft = _histogram(TTFT_BOUNDS, [0.05, 0.2, 0.28, 3.0])
    assert within_bound(ttft, 0.3) == 2, "0.3 s is between bounds: counted up to 0.25 s"


class _Scheduler(SimpleNamespace):
    """The attributes of vLLM 0.32's Scheduler the plugin reads and sets (the integration
    tests run the plugin in the real one)."""


def _scheduler(chunked_prefill: bool = True) -> _Scheduler:
    return _Scheduler(
        max_num_running_reqs=64,
        max_num_active_reqs=64,
        max_num_scheduled_tokens=2048,
        max_model_len=1024,
        scheduler_config=SimpleNamespace(enable_chunked_prefill=chunked_prefill, max_num_batched_tokens=2048),
        vllm_config=SimpleNamespace(parallel_config=SimpleNamespace(data_parallel_size=1)),
    )


def test_the_plugin_sets_both_knobs_between_steps_within_what_the_scheduler_needs():
    scheduler = _scheduler()
    knobs = SchedulerKnobs(scheduler, threading.Lock())
    wire = knobs.hello()["knobs"]
    assert wire["max_num_active_seqs"]["max"] == 64 and wire["max_num_scheduled_tokens"]["max"] == 2048
    assert knobs.apply({"max_num_active_seqs": 8, "max_num_scheduled_tokens": 256}) == {
        "max_num_active_seqs": 8,
        "max_num_scheduled_tokens": 256,
    }
    assert (scheduler.max_num_active_reqs, scheduler.max_num_scheduled_tokens) == (8, 256)
    refusals = {
        "max_num_active_seqs": (128, "above its maximum 64"),
        "max_num_scheduled_tokens": (4, "below max_num_active_seqs=8: each running sequence needs a token per step"),
        "max_num_seqs": (32, "applies only at restart"),
    }
    for name, (value, why) in refusals.items():
        with pytest.raises(KnobError, match=why):
            knobs.apply({name: value})
    with pytest.raises(KnobError, match="above its maximum"):
        knobs.apply({"max_num_active_seqs": 16, "max_num_scheduled_tokens": 4096})
    assert (scheduler.max_num_active_reqs, scheduler.max_num_scheduled_tokens) == (8, 256), "all or nothing"


def test_without_chunked_prefill_a_step_must_hold_a_whole_prompt():
    knobs = SchedulerKnobs(_scheduler(chunked_prefill=False), threading.Lock())
    with pytest.raises(KnobError, match="below max_model_len=1024, and chunked prefill is off"):
        knobs.apply({"max_num_scheduled_tokens": 512})
    assert knobs.apply({"max_num_scheduled_tokens": 1024}) == {"max_num_scheduled_tokens": 1024}


def test_an_unknown_scheduler_or_several_engine_cores_are_refused():
    assert unknown_scheduler(_scheduler()) == ""
    older = _scheduler()
    del older.max_num_active_reqs
    assert "has no max_num_active_reqs" in unknown_scheduler(older)
    parallel = _scheduler()
    parallel.vllm_config.parallel_config.data_parallel_size = 2
    assert "several engine cores" in unknown_scheduler(parallel)


def test_the_plugin_wheel_imports_with_nothing_but_the_standard_library(tmp_path):
    path = wheel.build(tmp_path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert "gputuned_vllm_plugin-" in names[-1] and names[-1].endswith("RECORD")
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[vllm.general_plugins]\ngputuned = gputuned.vllm.plugin:register" in entry_points
    # -I -S: no site-packages, so nothing of gputuned's own requirements can be found.
    probe = f"import sys; sys.path.insert(0, {str(path)!r}); import gputuned.vllm.plugin as p; p.register(); print(p.__file__)"
    answer = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, check=False)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith(str(path))
    assert wheel.build(tmp_path / "again").read_bytes() == path.read_bytes(), "the same sources give the same wheel"


def test_a_started_vllm_gets_the_plugin_socket_and_cache_directories_it_may_write(tmp_path):
    spec = VllmSpec("/opt/vllm/bin/python", "/models/llama", "127.0.0.1", 8300, ("--max-num-seqs", "64"))
    assert server_command(spec)[:3] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    env = server_env({"HF_HOME": "/srv/hf"}, tmp_path / "p.sock", tmp_path / "cache")
    assert env["GPUTUNED_VLLM_SOCKET"] == str(tmp_path / "p.sock")
    assert env["HF_HOME"] == "/srv/hf", "the operator's own setting stays"
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "cache" / "vllm") and (tmp_path / "cache" / "vllm").is_dir()


def test_the_adapter_command_of_a_started_and_an_attached_vllm():
    started = WorkerConfig(kind="vllm", model="/models/llama", listen="127.0.0.1:8300", vllm_python="/opt/vllm/bin/python")
    socket = Path("/run/gputuned/worker.sock")
    command = vllm_adapter_command(started, socket, {"max_num_active_seqs": 16}, Path("/var/lib/gputuned/cache"))
    assert command[3] == "vllm-adapter"
    for pair in (
        ["--python", "/opt/vllm/bin/python"],
        ["--plugin-socket", str(vllm_plugin_socket(socket))],
        ["--saved-knob", "max_num_active_seqs=16"],
    ):
        assert any(command[i : i + 2] == pair for i in range(len(command))), pair
    assert not started.attached and started.start_timeout == 600.0
    attached = WorkerConfig(kind="vllm", model="llama", listen="127.0.0.1:8300", vllm_plugin_socket="/run/vllm/p.sock")
    command = vllm_adapter_command(attached, socket, {}, Path("/cache"))
    assert "--python" not in command and command[command.index("--plugin-socket") + 1] == "/run/vllm/p.sock"
    assert attached.attached
    assert worker_launch(lambda: attached, socket, dict, Path("/cache")).ready_url == "http://127.0.0.1:8300/health"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vllm_python = '/opt/vllm/bin/python'\n", "vllm_python: set only for a worker of kind 'vllm'"),
        ("kind = 'vllm'\nvllm_args = ['--x']\n", "vllm_args: only with vllm_python"),
        (
            "kind = 'vllm'\nvllm_python = 'p'\nvllm_plugin_socket = '/s'\n",
            "vllm_plugin_socket: only for an attached vLLM",
        ),
        ("kind = 'vllm'\ncommand = ['serve']\n", "command: a worker of kind 'vllm' runs gputuned's vLLM adapter"),
    ],
)
def test_bad_vllm_worker_settings_are_refused(tmp_path, text, message):
    path = tmp_path / "gputuned.toml"
    path.write_text("[worker]\n" + text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_lengths_fixed_uniform_or_from_a_file(tmp_path):
    rng = random.Random(1)
    assert parse_lengths("128").draw(rng) == 128
    assert {parse_lengths("2-4").draw(rng) for _ in range(200)} == {2, 3, 4}
    trace = tmp_path / "lengths.txt"
    trace.write_text("# prompt lengths from a trace\n17\n\n300  # a long one\n")
    assert {parse_lengths(f"@{trace}").draw(rng) for _ in range(100)} == {17, 300}
    for bad, why in (
        ("0", "at least 1"),
        ("9-3", "LOW at most HIGH"),
        ("many", "not a length"),
        ("@/nonexistent", "cannot read"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_lengths(bad)
    trace.write_text("12\nx\n")
    with pytest.raises(ValueError, match=r"lengths.txt:2: 'x' is not a length"):
        parse_lengths(f"@{trace}")
