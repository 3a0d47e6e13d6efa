"""The daemon's pure parts, without threads, sockets or sleeps: restart backoff and crash
loops, placement choice, the sd_notify messages, the hello check, job error accounting,
the stats history, the built-in worker's command line, and the agent's all-or-nothing set."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from gputuned.config import WorkerConfig
from gputuned.control.messages import Decision
from gputuned.control.protocol import ProtocolError, message, validate_hello
from gputuned.daemon.history import StatsHistory
from gputuned.daemon.jobs import JobEvents
from gputuned.daemon.launch import builtin_worker_command
from gputuned.daemon.placement import Placement, choose_placement
from gputuned.daemon.restarts import RestartPlan, RestartPolicy
from gputuned.daemon.sdnotify import status_due, watchdog_due
from gputuned.daemon.status import WorkerSnapshot, build_status, duration, format_status, status_line, worker_entry
from gputuned.daemon.supervisor import WorkerState, WorkerStatus
from gputuned.knobs import KnobError
from gputuned.performance import Generation, GenerativeObjectives, Measurement
from gputuned.store import SampleStore
from gputuned.tuners.guard import GuardView
from gputuned.worker.agent import Agent

# --- restarts ---------------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_up_to_the_maximum():
    policy = RestartPolicy(initial_delay=0.5, max_delay=4.0, crash_loop_exits=100)
    plan = RestartPlan(policy, random.Random(3))
    delays = [plan.on_exit(now=10.0 * i, started_at=10.0 * i - 1) for i in range(1, 7)]
    for delay, base in zip(delays, [0.5, 1, 2, 4, 4, 4]):
        assert delay is not None and 0.8 * base <= delay <= 1.2 * base


def test_a_worker_that_ran_a_whole_window_starts_the_backoff_afresh():
    plan = RestartPlan(RestartPolicy(initial_delay=1.0, crash_loop_window=60.0, crash_loop_exits=100), random.Random(1))
    plan.on_exit(now=1.0, started_at=0.0)
    second = plan.on_exit(now=3.0, started_at=2.0)
    assert second is not None and second >= 1.6  # the second exit in a row: about 2 s
    after_a_good_run = plan.on_exit(now=200.0, started_at=100.0)
    assert after_a_good_run is not None and after_a_good_run <= 1.2


def test_crash_loop_after_n_exits_within_the_window_only():
    plan = RestartPlan(RestartPolicy(crash_loop_exits=3, crash_loop_window=10.0))
    assert plan.on_exit(0.0, None) is not None
    assert plan.on_exit(20.0, 19.0) is not None  # the first exit fell out of the window
    assert plan.on_exit(21.0, 20.5) is not None
    assert plan.on_exit(22.0, 21.5) is None  # three within 10 s
    assert "3 exits within 10 s" in plan.crash_loop_message(1, "gpu0")
    assert "`gputuned restart --worker gpu0`" in plan.crash_loop_message(1, "gpu0")
    plan.forget()
    assert plan.on_exit(100.0, None) is not None  # the earlier exits no longer count


# --- placement --------------------------------------------------------------------------------

NODES = {0: ((0, 1, 2, 3), 1_000), 1: ((4, 5, 6, 7), 9_000)}


@pytest.mark.parametrize(
    ("setting", "gpu_node", "expected", "why"),
    [
        ("off", 0, None, "off"),
        ("auto", 0, Placement(0, (0, 1, 2, 3)), "GPU's node"),
        ("auto", None, Placement(1, (4, 5, 6, 7)), "most free memory"),
        ("auto", -1, Placement(1, (4, 5, 6, 7)), "most free memory"),
        ("0", 1, Placement(0, (0, 1, 2, 3)), "as configured"),
        ("5", 0, None, "no online CPUs"),
    ],
)
def test_placement_choice(setting, gpu_node, expected, why):
    placement, reason = choose_placement(setting, gpu_node, NODES)
    assert placement == expected and why in reason


def test_a_single_node_is_not_placed():
    assert choose_placement("auto", None, {0: ((0, 1), 5)}) == (None, "a single NUMA node: nothing to place")


# --- sd_notify --------------------------------------------------------------------------------


def test_the_watchdog_is_fed_before_the_next_round_would_be_late():
    assert not watchdog_due(now=10.0, last_sent=9.0, interval=None, sampling_interval=1.0)
    assert not watchdog_due(now=10.0, last_sent=9.0, interval=5.0, sampling_interval=1.0)
    assert watchdog_due(now=13.5, last_sent=9.0, interval=5.0, sampling_interval=1.0)
    assert status_due(now=15.0, last_sent=10.0, every=5.0) and not status_due(now=14.0, last_sent=10.0, every=5.0)


def status(state: WorkerState, knobs: dict[str, int]) -> WorkerStatus:
    return WorkerStatus(state, 1, 0, None, 0.0, None, knobs, None, None, None, "")


def test_the_status_line():
    assert status_line([]) == "monitoring (no worker)"
    view = GuardView("auto", "settled", False, [], [], {})
    performance = Measurement(10, 120, 118.0, 117, 0.0423, 0, 4, 0.01, 0.9, 0, 1, 0, 0, 0)
    ready = WorkerSnapshot("gpu0", status(WorkerState.READY, {"streams": 2, "max_batch_size": 8}), performance, view, "disk full")
    assert (
        status_line([ready])
        == "gpu0 ready, 118.0 req/s, p99 42.3 ms, max_batch_size=8 streams=2, state not saved, kept in memory"
    )
    waiting = WorkerSnapshot("gpu1", status(WorkerState.BACKOFF, {}), None, view, None)
    assert status_line([ready, waiting]).endswith("; gpu1 backoff")


# --- the hello check ----------------------------------------------------------------------------


def hello(**knob: object) -> dict:
    return message("hello", worker={"pid": 1}, knobs={"max_batch_size": knob})


def test_a_well_formed_hello_passes():
    assert validate_hello(hello(value=4, min=1, max=64, live=True, type="int"))


@pytest.mark.parametrize(
    ("knob", "reason"),
    [
        ({"value": 4, "min": 1, "live": True}, "has no 'max'"),
        ({"value": "4", "min": 1, "max": 8, "live": True}, "'value' must be an integer"),
        ({"value": True, "min": 1, "max": 8, "live": True}, "'value' must be an integer"),
        ({"value": 4, "min": 1, "max": 8}, "'live' must be a boolean"),
        ({"value": 9, "min": 1, "max": 8, "live": True}, "outside 1..8"),
    ],
)
def test_a_malformed_hello_names_the_knob_and_the_field(knob, reason):
    with pytest.raises(ProtocolError, match="max_batch_size") as raised:
        validate_hello(hello(**knob))
    assert reason in str(raised.value)


def test_a_knob_that_is_not_an_object():
    with pytest.raises(ProtocolError, match="must be an object"):
        validate_hello(message("hello", worker={}, knobs={"streams": 2}))


# --- job errors ---------------------------------------------------------------------------------


def test_a_failing_job_is_told_once_per_distinct_error_and_counted_every_time(caplog):
    store = SampleStore(2)
    errors = JobEvents(store, "sample")
    errors.register("sample")
    errors.register("tune:worker")
    assert store.job_errors() == {"sample": 0, "tune:worker": 0}
    with caplog.at_level(logging.ERROR):
        for _ in range(5):
            errors.failed("tune:worker", ValueError("bad window"), "Traceback ...\nValueError: bad window")
        errors.failed("tune:worker", KeyError("knob"), "Traceback ...\nKeyError: 'knob'")
    assert store.job_errors() == {"sample": 0, "tune:worker": 6}
    told = [record.getMessage() for record in caplog.records]
    assert len(told) == 2
    assert "bad window" in told[0] and "Traceback" in told[0] and "KeyError" in told[1]


# --- the stats history ----------------------------------------------------------------------------


def test_the_history_bounds_windows_and_ignores_reports_out_of_order():
    history = StatsHistory(capacity=4)
    for t in (1.0, 2.0, 3.0, 4.0, 5.0):
        history.append(t, {"completed": t})
    history.append(4.5, {"completed": -1})  # replayed after a reconnect
    assert history.latest() == (5.0, {"completed": 5.0})
    older, newer = history.between(2.5, 4.7)
    assert older[0] == 2.0 and newer[0] == 4.0
    assert history.between(0.0, 1.5) is None  # the oldest kept report (2.0) is after the window
    history.clear()
    assert history.latest() is None and history.between(0.0, 10.0) is None


# --- the agent's all-or-nothing set -------------------------------------------------------------


def agent_with(pool_fails: bool, restore_fails: bool = False) -> tuple[Agent, dict[str, int]]:
    settings = {"max_batch_size": 1, "pool_mb": 0}
    agent = Agent(None, model="m", device="cpu", input_shape=[4], input_dtype="FP32")

    def set_batch(value: int) -> None:
        if restore_fails and value == 1:
            raise RuntimeError("batcher is gone")
        settings["max_batch_size"] = value

    def set_pool(value: int) -> None:
        if pool_fails:
            raise RuntimeError("can't allocate memory")
        settings["pool_mb"] = value

    agent.knob("max_batch_size", default=1, minimum=1, maximum=64, apply=set_batch)
    agent.knob("pool_mb", default=0, minimum=0, maximum=4096, apply=set_pool)
    return agent, settings


def test_a_set_that_fails_part_way_changes_nothing():
    agent, settings = agent_with(pool_fails=True)
    with pytest.raises(KnobError) as refused:
        agent.apply({"max_batch_size": 8, "pool_mb": 2048})
    assert "pool_mb=2048 could not be applied: can't allocate memory" in str(refused.value)
    assert "restored max_batch_size=1: nothing was changed" in str(refused.value)
    assert settings == {"max_batch_size": 1, "pool_mb": 0}
    assert agent.values == {"max_batch_size": 1, "pool_mb": 0}
    assert {name: spec["value"] for name, spec in agent.hello()["knobs"].items()} == agent.values
    assert agent.status()["knobs"] == agent.values


def test_a_set_that_applies_changes_everything():
    agent, settings = agent_with(pool_fails=False)
    assert agent.apply({"max_batch_size": 8, "pool_mb": 16}) == {"max_batch_size": 8, "pool_mb": 16}
    assert settings == agent.values == {"max_batch_size": 8, "pool_mb": 16}


def test_a_restore_that_fails_too_is_told_and_the_values_say_what_the_server_holds():
    agent, _ = agent_with(pool_fails=True, restore_fails=True)
    with pytest.raises(KnobError, match="could not restore max_batch_size stays 8"):
        agent.apply({"max_batch_size": 8, "pool_mb": 2048})
    assert agent.values == {"max_batch_size": 8, "pool_mb": 0}


# --- the status report ---------------------------------------------------------------------------


def test_the_status_report_and_its_tables():
    worker = WorkerStatus(
        WorkerState.PROTOCOL_ERROR,
        4242,
        2,
        -9,
        100.0,
        {"worker": {"model": "m", "device": "cpu"}},
        {"streams": 2},
        None,
        None,
        Placement(1, (4, 5)),
        "protocol error: hello: knob 'streams' has no 'max'; the worker is left running, not tuned",
    )
    performance = Measurement(10, 120, 118.0, 117, 0.0423, 3, 4, 0.01, 0.9, 0, 1, 0, 0, 0, p50=0.011, refused=5, rejected=40)
    decision = Decision(1_800_000_000.0, "streams", "keep", 1, 2, "a second lane; kept")
    view = GuardView("auto", "settled", False, ["pool_mb"], [decision], {})
    idle = WorkerStatus(WorkerState.READY, 77, 0, None, 150.0, None, {"streams": 1, "pool_mb": 0}, None, None, None, "")
    later = Decision(1_800_000_100.0, "pool_mb", "apply", 0, 16, "a pool")
    workers = [
        WorkerSnapshot("gpu0", worker, performance, view, None, 0.1),
        WorkerSnapshot("gpu1", idle, None, GuardView("frozen", "settled", False, [], [later], {}), "disk full"),
    ]
    report = build_status(SampleStore(2), workers, 160.0, 40.0, "http://127.0.0.1:9842/metrics")
    first = worker_entry(report, "gpu0")
    assert report["daemon"]["uptime_seconds"] == 120.0 and first["uptime_seconds"] == 60.0
    assert first["performance"]["failed"] == 3 and first["performance"]["rejected"] == 40
    assert worker_entry(report, "gpu1")["state_error"] == "disk full"
    with pytest.raises(KeyError, match="name one with --worker: gpu0, gpu1"):
        worker_entry(report)
    with pytest.raises(KeyError, match="no worker named 'gpu7'"):
        worker_entry(report, "gpu7")
    with pytest.raises(KeyError, match=r"runs without a worker \(--no-worker\)"):
        worker_entry({"workers": []})
    text = format_status(report)
    assert "gputuned " in text and "up 2m 00s" in text and "GPUs: none visible through NVML" in text
    assert "gpu0    protocol_error  4242" in text and "node 1 (CPUs 4-5)" in text
    assert "gpu1    ready           77" in text
    assert "gpu0: tuner auto (settled), frozen by hand: pool_mb" in text
    assert "  protocol error: hello: knob 'streams' has no 'max'" in text
    assert (
        "throughput 118.0 req/s, goodput 117.0/s, p50 11.0 ms, p99 42.3 ms (SLO 100 ms), 3 failed, 5 refused, 40 rejected" in text
    )
    assert first["tuner"]["slo_p99_seconds"] == 0.1 and worker_entry(report, "gpu1")["tuner"]["slo_p99_seconds"] is None
    assert "  state not saved (disk full)" in text
    assert "KNOB     GPU0  GPU1\npool_mb  -     0\nstreams  2     1" in text
    assert text.index("gpu0 keep      streams 1 -> 2") < text.index("gpu1 apply     pool_mb 0 -> 16")


def test_an_llm_worker_in_the_status_report():
    hello = {"worker": {"model": "llama", "device": "cuda:0", "kind": "vllm", "note": "knobs read-only: no plugin"}}
    status = WorkerStatus(WorkerState.READY, 99, 0, None, 100.0, hello, {}, None, None, None, "")
    generation = Generation(1712.4, 640.0, 0.2, 0.8123, 0.02, 0.0311, 2, 15.6, 3.2, 0.42, 1)
    performance = Measurement(10, 9.5, 9.0, 8.5, 3.1, 0, 0, None, 0, 3, 1, 0, 0, 0, generation=generation, tail_ratio=0.81)
    view = GuardView("recommend", "settled", False, [], [], {})
    snapshot = WorkerSnapshot("llama", status, performance, view, None, 0.1, GenerativeObjectives(1.0, 0.05))
    report = build_status(SampleStore(2), [snapshot], 160.0, 40.0, "http://127.0.0.1:9842/metrics")
    entry = worker_entry(report)
    assert entry["kind"] == "vllm" and entry["note"] == "knobs read-only: no plugin"
    assert entry["tuner"]["slo_ttft_seconds"] == 1.0 and entry["performance"]["generation"]["preemptions"] == 2
    text = format_status(report)
    assert "goodput 8.50/s within TTFT 1000 ms and TPOT 50 ms, 1712 tokens/s out" in text
    assert (
        "TTFT p50 200.0 ms, p99 812.3 ms; TPOT p50 20.0 ms, p99 31.1 ms; 16 running, 3 waiting, KV cache 42%, 2 preempted" in text
    )
    assert "0 failed, 0 refused, 0 rejected, 1 aborted (last 10 s)" in text and "  knobs read-only: no plugin" in text
    assert "GPU:" not in text  # no energy reading, no line


def test_a_gpu_worker_energy_and_sm_activity_in_the_status_report():
    hello = {"worker": {"model": "llama", "device": "cuda:0", "kind": "vllm"}}
    status = WorkerStatus(WorkerState.READY, 99, 0, None, 100.0, hello, {}, None, None, None, "")
    generation = Generation(1712.4, 640.0, 0.2, 0.8123, 0.02, 0.0311, 2, 15.6, 3.2, 0.42, 1)
    performance = Measurement(
        10, 9.5, 9.0, 8.5, 3.1, 0, 0, None, 0, 3, 1, 0, 0, 0, generation=generation, sm_active=0.634, watts=342.5
    )
    view = GuardView("auto", "settled", False, [], [], {})
    snapshot = WorkerSnapshot("llama", status, performance, view, None, 0.1, GenerativeObjectives(1.0, 0.05), "goodput_per_watt")
    entry = worker_entry(build_status(SampleStore(2), [snapshot], 160.0, 40.0, "http://127.0.0.1:9842/metrics"))
    assert entry["performance"]["joules_per_request"] == pytest.approx(342.5 / 9.0)
    assert entry["performance"]["joules_per_token"] == pytest.approx(342.5 / 1712.4)
    assert entry["tuner"]["objective"] == "goodput_per_watt"
    text = format_status({**build_status(SampleStore(2), [snapshot], 160.0, 40.0, "m"), "gpus": []})
    assert "  GPU: SMs 63% active, 342 W attributed, 38.1 J/request, 0.2 J/token (tuning for goodput per watt)" in text


# --- the built-in worker's command line ------------------------------------------------------


def test_the_worker_command_carries_its_gpu_memory_cap_and_saved_knobs():
    capped = builtin_worker_command(WorkerConfig(device="cuda:1", gpu_memory_fraction=0.25), Path("/run/w.sock"), {"streams": 2})
    assert capped[capped.index("--device") + 1] == "cuda:1"
    assert capped[capped.index("--gpu-memory-fraction") + 1] == "0.25"
    assert capped[-2:] == ["--saved-knob", "streams=2"]
    assert "--gpu-memory-fraction" not in builtin_worker_command(WorkerConfig(), Path("/run/w.sock"), {})


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (0.4, "0s"), (45, "45s"), (725, "12m 05s"), (12_000, "3h 20m"), (187_200, "2d 04h")],
)
def test_durations_read_as_people_write_them(seconds, shown):
    assert duration(seconds) == shown
