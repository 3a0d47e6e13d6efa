"""The Triton adapter's pure parts: knobs <-> model config, Triton's numbers -> worker stats,
the adapter's command line and config. The fixtures are a real Triton 2.51's answers
(/metrics with summary_latencies=true, and /v2/models/resnet-mini/stats) under load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gputuned.adapting.process import check_ports_free, device_indices
from gputuned.config import ConfigError, WorkerConfig, load_config
from gputuned.daemon.launch import TRITON_RELOAD_SECONDS, triton_adapter_command, worker_launch
from gputuned.performance import Counters, measure
from gputuned.triton import model_config
from gputuned.triton.adapter import default_metrics_url
from gputuned.triton.api import TritonClient, TritonError
from gputuned.triton.readings import (
    LatencyEstimate,
    parse_metrics,
    quantile_observations,
    raw_counters,
    worker_stats,
)
from gputuned.triton.server import ServerSpec, server_command

DATA = Path(__file__).parent / "data"
AS_USERS_WRITE_IT = {  # what Triton reports for `gputuned triton-example`'s config.pbtxt
    "name": "resnet-mini",
    "backend": "python",
    "max_batch_size": 8,
    "input": [{"name": "INPUT", "data_type": "TYPE_FP32", "dims": [3, 64, 64]}],
    "instance_group": [{"name": "resnet-mini_0", "kind": "KIND_CPU", "count": 1, "gpus": []}],
}


def test_a_config_without_dynamic_batching_runs_batches_of_one():
    assert model_config.knobs_of(AS_USERS_WRITE_IT) == {"streams": 1, "max_batch_size": 1, "max_queue_delay_us": 0}
    specs = model_config.knob_specs(AS_USERS_WRITE_IT)
    assert {name: (spec.minimum, spec.maximum) for name, spec in specs.items()} == {
        "streams": (1, 8),
        "max_batch_size": (1, 128),
        "max_queue_delay_us": (0, 100_000),
    }


def test_a_batch_change_turns_dynamic_batching_on_with_the_batch_as_preferred_size():
    changed = model_config.with_knobs(AS_USERS_WRITE_IT, {"max_batch_size": 16})
    assert changed["max_batch_size"] == 16
    assert changed["dynamic_batching"] == {"max_queue_delay_microseconds": 0, "preferred_batch_size": [16]}
    assert changed["instance_group"] == AS_USERS_WRITE_IT["instance_group"]
    assert model_config.knobs_of(changed) == {"streams": 1, "max_batch_size": 16, "max_queue_delay_us": 0}
    # Triton fills in a preferred size of its own (here the old maximum): it follows the batch.
    again = model_config.with_knobs({**changed, "dynamic_batching": {"preferred_batch_size": [2]}}, {"max_queue_delay_us": 500})
    assert again["dynamic_batching"] == {"max_queue_delay_microseconds": 500, "preferred_batch_size": [16]}
    assert AS_USERS_WRITE_IT["max_batch_size"] == 8  # the input is not modified


def test_instances_alone_leave_batching_as_it_is():
    changed = model_config.with_knobs(AS_USERS_WRITE_IT, {"streams": 3})
    assert "dynamic_batching" not in changed and changed["max_batch_size"] == 8
    assert changed["instance_group"][0] == {**AS_USERS_WRITE_IT["instance_group"][0], "count": 3}


def test_an_instance_change_is_loaded_as_a_full_reload():
    # Triton's in-place instance update can wait on a steady load indefinitely: a parameter of
    # gputuned's own changes with the count, forcing a full reload.
    reload = model_config.RELOAD_PARAMETER
    more = model_config.with_knobs(AS_USERS_WRITE_IT, {"streams": 2})
    first = model_config.for_load(AS_USERS_WRITE_IT, {"streams": 2})
    assert first["parameters"] == {reload: {"string_value": "1"}} and first["instance_group"] == more["instance_group"]
    running = {**first, "parameters": {"operators": {"string_value": "x"}, reload: {"string_value": "1"}}}
    second = model_config.for_load(running, {"streams": 1})
    assert second["parameters"] == {"operators": {"string_value": "x"}, reload: {"string_value": "2"}}
    assert model_config.without_reload_parameter(second)["parameters"] == {"operators": {"string_value": "x"}}
    assert "parameters" not in model_config.without_reload_parameter(first)
    # A batch change is a full reload already: it goes as it is.
    batched = model_config.with_knobs(AS_USERS_WRITE_IT, {"max_batch_size": 4})
    assert model_config.for_load(AS_USERS_WRITE_IT, {"max_batch_size": 4}) == batched
    assert model_config.for_load(batched, {"streams": 3})["parameters"] == {reload: {"string_value": "1"}}


def test_instances_count_every_group_on_every_gpu_it_lists():
    assert model_config.instances(AS_USERS_WRITE_IT) == 1
    on_gpus = {"instance_group": [{"kind": "KIND_GPU", "count": 2, "gpus": [0, 1]}, {"kind": "KIND_CPU", "count": 1}]}
    assert model_config.instances(on_gpus) == 5


def test_a_model_that_does_not_batch_gets_only_instances():
    unbatched = {**AS_USERS_WRITE_IT, "max_batch_size": 0}
    assert set(model_config.knob_specs(unbatched)) == {"streams"}
    assert model_config.with_knobs(unbatched, {"streams": 2})["max_batch_size"] == 0


def test_metrics_are_read_per_model_with_failures_by_whose_fault():
    reading = parse_metrics((DATA / "triton_metrics.txt").read_text(), "resnet-mini")
    assert reading.success == 8608
    assert reading.request_duration_us == 436073843
    assert reading.failures == {"failed": 0, "refused": 0, "rejected": 0}
    assert reading.latency_quantiles_us == {0.5: 49605, 0.9: 64987, 0.95: 69611, 0.99: 82469, 0.999: 128335}
    assert parse_metrics((DATA / "triton_metrics.txt").read_text(), "other-model").success == 0
    failures = (
        'nv_inference_request_failure{model="m",reason="BACKEND",version="1"} 2\n'
        'nv_inference_request_failure{model="m",reason="OTHER",version="1"} 1\n'
        'nv_inference_request_failure{model="m",reason="REJECTED",version="1"} 4\n'
        'nv_inference_request_failure{model="m",reason="CANCELED",version="1"} 5\n'
    )
    assert parse_metrics(failures, "m").failures == {"failed": 3, "refused": 4, "rejected": 5}


def test_counters_survive_the_reset_a_reload_makes():
    counters = Counters()
    counters.update({"success": 100.0, "batches:8": 10.0})
    counters.update({"success": 150.0, "batches:8": 14.0})
    counters.update({"success": 20.0, "batches:8": 3.0})  # reloaded: the statistics start again
    assert counters.totals == {"success": 170.0, "batches:8": 17.0}


def test_the_statistics_extension_gives_batches_by_size():
    stats = json.loads((DATA / "triton_stats.json").read_text())["model_stats"][0]
    raw = raw_counters(parse_metrics((DATA / "triton_metrics.txt").read_text(), "resnet-mini"), stats)
    assert raw["batches:1"] == 20 and raw["batches:16"] == 4
    assert sum(value for name, value in raw.items() if name.startswith("batches:")) == stats["execution_count"]
    report = worker_stats(raw, LatencyEstimate().snapshot(), pending=3, instances=2)
    assert report["batches"] == stats["execution_count"]
    assert report["batch_size"]["sum"] == stats["inference_count"]  # items
    assert report["completed"] == 8608 and report["queue_depth"] == 3 and report["lanes"] == 2
    assert report["lane_busy_seconds"] == pytest.approx(
        sum(
            entry[phase]["ns"] for entry in stats["batch_stats"] for phase in ("compute_input", "compute_infer", "compute_output")
        )
        / 1e9
    )


def test_quantile_observations_place_every_request():
    spread = quantile_observations({0.5: 0.01, 0.9: 0.02, 0.99: 0.05}, 1000)
    assert spread == [(0.01, 500), (0.02, 400), (0.05, 90), (0.05, 10)]
    assert sum(times for _, times in quantile_observations({0.5: 0.01}, 3)) == 3
    assert quantile_observations({}, 10) == []


def test_latency_follows_each_intervals_exact_mean_in_the_summarys_shape():
    estimate = LatencyEstimate()
    shape = {0.5: 40_000.0, 0.99: 80_000.0}  # µs over the minute, whose mean is 40 ms
    estimate.update(0.0, 0, 0, shape)
    estimate.update(0.5, 100, 100 * 40_000, shape)  # 100 requests at a mean of 40 ms
    first = estimate.snapshot()
    estimate.update(1.0, 300, 100 * 40_000 + 200 * 10_000, shape)  # then 200 at a mean of 10 ms
    second = estimate.snapshot()
    before = {"completed": 100, "requests": 100, "batches": 0, "latency_seconds": first}
    after = {"completed": 300, "requests": 300, "batches": 0, "latency_seconds": second}
    window = measure(before, after, 0.5, slo_seconds=0.1)
    assert window is not None
    # The second interval's mean fell to a quarter of the minute's (40 -> ~16 ms over the
    # minute), so its tail falls with it: p99 well below the minute's 80 ms.
    assert window.p99 is not None and window.p99 < 0.05
    assert window.goodput == pytest.approx(400.0)
    assert first["count"] == 100 and second["count"] == 300


def test_without_a_summary_every_request_sits_at_the_mean():
    estimate = LatencyEstimate()
    estimate.update(0.0, 0, 0, {})
    estimate.update(0.5, 10, 10 * 20_000, {})
    snapshot = estimate.snapshot()
    assert snapshot["count"] == 10 and snapshot["sum"] == pytest.approx(0.2)


def test_the_adapter_command_carries_the_server_its_knobs_and_timeouts():
    worker = WorkerConfig(
        kind="triton",
        model="resnet-mini",
        listen="127.0.0.1:8100",
        device="cpu",
        triton_server="/opt/tritonserver/bin/tritonserver",
        triton_repository="/models",
        triton_args=["--log-verbose=1"],
    )
    command = triton_adapter_command(worker, Path("/run/w.sock"), {"streams": 2}, drain_seconds=30)
    assert command[3:9] == ["triton-adapter", "--model", "resnet-mini", "--url", "http://127.0.0.1:8100", "--control-socket"]
    for pair in (["--server", "/opt/tritonserver/bin/tritonserver"], ["--repository", "/models"], ["--saved-knob", "streams=2"]):
        assert any(command[i : i + 2] == pair for i in range(len(command)))
    assert "--server-arg=--log-verbose=1" in command and "--drain-timeout" in command
    launch = worker_launch(lambda: worker, Path("/run/w.sock"), dict, Path("/var/lib/gputuned/cache"))
    assert launch.ready_url == "http://127.0.0.1:8100/v2/models/resnet-mini/ready"
    assert launch.set_timeout == TRITON_RELOAD_SECONDS
    assert "--write-back" not in command
    attached = WorkerConfig(kind="triton", model="m", listen="127.0.0.1:8100")
    assert "--server" not in triton_adapter_command(attached, Path("/run/w.sock"), {}, drain_seconds=30)
    writing = WorkerConfig(kind="triton", model="m", listen="127.0.0.1:8100", triton_repository="/models", triton_write_back=True)
    command = triton_adapter_command(writing, Path("/run/w.sock"), {}, drain_seconds=30)
    assert "--server" not in command and "--write-back" in command
    assert any(command[i : i + 2] == ["--repository", "/models"] for i in range(len(command)))


def test_the_started_server_is_loopback_explicit_and_summarised():
    spec = ServerSpec("tritonserver", Path("/models"), "m", "127.0.0.1", 8100, 8102, ("--exit-timeout-secs=5",))
    command = server_command(spec)
    for expected in (
        "--model-control-mode=explicit",
        "--load-model=m",
        "--http-address=127.0.0.1",
        "--metrics-port=8102",
        "--allow-grpc=false",
        "--metrics-config=summary_latencies=true",
    ):
        assert expected in command
    assert command[-1] == "--exit-timeout-secs=5"


@pytest.mark.integration  # binds a real port
def test_a_taken_port_is_named():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"port 127.0.0.1:{port} is taken"):
            check_ports_free("127.0.0.1", [port])


def test_urls_and_devices():
    assert default_metrics_url("http://127.0.0.1:8000") == "http://127.0.0.1:8002/metrics"
    assert default_metrics_url("http://[::1]:9000") == "http://[::1]:9002/metrics"
    with pytest.raises(ValueError, match="names no port"):
        default_metrics_url("http://triton")
    assert device_indices("cuda:3") == [3] and device_indices("cpu") == [] and device_indices("auto") is None


def test_an_unreachable_triton_is_a_clear_error():
    client = TritonClient("http://127.0.0.1:9", "http://127.0.0.1:9/metrics", timeout=1.0)
    with pytest.raises(TritonError, match=r"GET /v2/models/m/config: .*refused"):
        client.model_config("m")
    assert not client.ready()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind = 'tensorrt'\n", "kind: 'tensorrt' is not allowed; allowed values: builtin, triton"),
        ("triton_server = '/bin/tritonserver'\n", "triton_server: set only for a worker of kind 'triton'"),
        ("kind = 'triton'\ntriton_server = '/bin/tritonserver'\n", "triton_repository: needed with triton_server"),
        ("kind = 'triton'\ntriton_repository = '/models'\n", "triton_repository: only with triton_server or triton_write_back"),
        ("kind = 'triton'\ncommand = ['serve']\n", "command: a worker of kind 'triton' runs gputuned's Triton adapter"),
        ("kind = 'triton'\nlisten = '127.0.0.1:0'\n", "listen: a Triton worker needs Triton's HTTP port"),
        ("kind = 'triton'\ntriton_args = [1]\n", "triton_args: expected a list of strings"),
        ("kind = 'triton'\ntriton_write_back = true\n", "triton_write_back: needs triton_repository"),
        ("triton_write_back = true\n", "triton_write_back: set only for a worker of kind 'triton'"),
    ],
)
def test_bad_triton_worker_settings_are_refused(tmp_path, text, message):
    path = tmp_path / "gputuned.toml"
    path.write_text("[worker]\n" + text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(path)
