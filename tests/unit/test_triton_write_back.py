"""Write-back of accepted knobs into a model's config.pbtxt: only the knob fields change, the
previous file is kept beside it, and a file that cannot be read or written is a clear error."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from gputuned.triton import model_config
from gputuned.triton.repository import ConfigFile, WriteBackError

OPERATORS_FILE = """# the operator's comment
name: "ranker"
backend: "python"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
instance_group [{ kind: KIND_CPU count: 1 }]
parameters { key: "EXECUTION_ENV_PATH" value { string_value: "/envs/ranker.tar.gz" } }
"""
# What Triton reports for it: auto-completed (a default version policy, an optimization block).
RUNNING = {
    "name": "ranker",
    "backend": "python",
    "max_batch_size": 8,
    "version_policy": {"latest": {"num_versions": 1}},
    "instance_group": [{"name": "ranker_0", "kind": "KIND_CPU", "count": 1, "gpus": []}],
}


@pytest.fixture
def config_file(tmp_path):
    (tmp_path / "ranker").mkdir()
    (tmp_path / "ranker" / "config.pbtxt").write_text(OPERATORS_FILE)
    os.chmod(tmp_path / "ranker" / "config.pbtxt", 0o640)
    return ConfigFile(tmp_path, "ranker")


def test_only_the_knob_fields_change_and_the_previous_file_is_kept(config_file):
    knobs = {"max_batch_size": 4, "max_queue_delay_us": 500, "streams": 2}
    assert config_file.write_back(knobs, RUNNING)
    written = config_file.read()
    assert model_config.knobs_of(written) == knobs
    assert written["dynamic_batching"]["preferred_batch_size"] == [4]
    assert written["parameters"] == {"EXECUTION_ENV_PATH": {"string_value": "/envs/ranker.tar.gz"}}
    assert written["input"] == [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": ["16"]}]
    assert "version_policy" not in written, "the operator's file, not Triton's auto-completed config"
    assert config_file.previous.read_text() == OPERATORS_FILE
    assert stat.S_IMODE(config_file.path.stat().st_mode) == 0o640
    assert [p.name for p in config_file.path.parent.iterdir() if p.name.startswith(".")] == [], "no temporary left"


def test_knobs_the_file_already_holds_write_nothing(config_file):
    assert not config_file.write_back({"streams": 1}, RUNNING)
    assert not config_file.previous.exists()
    assert config_file.path.read_text() == OPERATORS_FILE


def test_a_second_write_keeps_the_one_before_it(config_file):
    config_file.write_back({"streams": 2}, RUNNING)
    first = config_file.path.read_text()
    config_file.write_back({"streams": 3}, RUNNING)
    assert config_file.previous.read_text() == first
    assert model_config.knobs_of(config_file.read())["streams"] == 3


def test_a_file_that_leaves_the_batch_size_to_auto_complete_gets_the_running_one(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('backend: "onnxruntime"\n')
    config_file = ConfigFile(tmp_path, "m")
    config_file.write_back({"max_batch_size": 16, "streams": 1}, {**RUNNING, "max_batch_size": 8})
    assert model_config.knobs_of(config_file.read())["max_batch_size"] == 16


def test_a_model_without_a_file_gets_the_running_config_with_the_knobs(tmp_path):
    (tmp_path / "ranker").mkdir()
    config_file = ConfigFile(tmp_path, "ranker")
    # Triton runs it with gputuned's reload parameter: that is not the operator's to keep.
    reloaded = model_config.for_load(RUNNING, {"streams": 2})
    config_file.write_back({"streams": 2}, reloaded)
    written = config_file.read()
    assert model_config.knobs_of(written)["streams"] == 2 and "parameters" not in written
    assert not config_file.previous.exists()


def test_a_broken_file_or_a_failed_write_is_a_clear_error_and_changes_nothing(config_file):
    config_file.path.write_text("max_batch_size: eight\n")
    with pytest.raises(WriteBackError, match="is not a valid model config"):
        config_file.write_back({"streams": 2}, RUNNING)
    config_file.path.write_text(OPERATORS_FILE)
    config_file.previous.mkdir()  # the previous file cannot be put in place: nothing is written
    with pytest.raises(WriteBackError, match=r"cannot write .*config\.pbtxt: Is a directory"):
        config_file.write_back({"streams": 2}, RUNNING)
    assert config_file.path.read_text() == OPERATORS_FILE
    assert sorted(p.name for p in config_file.path.parent.iterdir()) == ["config.pbtxt", "config.pbtxt.previous"]


def test_the_schema_loads_beside_another_copy_of_the_kserve_protocol(tmp_path):
    """tritonclient.grpc's own __init__ clashes with kserve's protocol definitions in one process;
    write-back loads only the model config's schema, so it does not."""
    probe = (
        "from kserve.protocol.grpc import grpc_predict_v2_pb2\n"
        "from pathlib import Path\n"
        "from gputuned.triton.repository import ConfigFile\n"
        f"print(ConfigFile(Path({str(tmp_path)!r}), 'm').read())\n"
    )
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert answer.returncode == 0 and answer.stdout.strip() == "{}", answer.stderr[-2000:]
