"""The config validator: every mistake names the key and what it accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from gputuned.config import (
    Config,
    ConfigError,
    TuningConfig,
    WorkerConfig,
    config_from_mapping,
    load_config,
    parse_listen_address,
    tuner_mode,
    with_overrides,
)
from gputuned.install import hidden_by_the_unit

REPO_ROOT = Path(__file__).parent.parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gputuned.toml"
    path.write_text(text)
    return path


def test_the_shipped_example_config_is_valid_and_equals_the_defaults():
    assert load_config(REPO_ROOT / "systemd" / "gputuned.toml") == Config()


def test_values_from_the_file_are_used(tmp_path):
    config = load_config(
        write(tmp_path, '[metrics]\nlisten = "[::1]:9999"\n[sampling]\ninterval_seconds = 2\n[collectors]\nnvml = false\n')
    )
    assert config.metrics.address == ("::1", 9999)
    assert config.sampling.interval_seconds == 2.0
    assert config.collectors.nvml is False and config.collectors.numa is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[metrics]\nlisen = 'x'\n", "metrics.lisen: unknown key; allowed keys: listen"),
        ("[sampler]\n", "sampler: unknown key; allowed keys: metrics, sampling, collectors, nvml, paths, worker, tuning, log"),
        ("[sampling]\ninterval_seconds = 'fast'\n", "sampling.interval_seconds: expected a number, got str 'fast'"),
        ("[sampling]\nwindow_samples = 2.5\n", "sampling.window_samples: expected an integer, got float 2.5"),
        ("[collectors]\nnvml = 1\n", "collectors.nvml: expected a boolean, got int 1"),
        ("[sampling]\ninterval_seconds = 0.01\n", "sampling.interval_seconds: 0.01 is out of range; allowed 0.1..3600.0"),
        ("[sampling]\nwindow_samples = true\n", "sampling.window_samples: expected an integer, got bool True"),
        ("[log]\nlevel = 'verbose'\n", "log.level: 'verbose' is not allowed; allowed values: debug, info, warning, error"),
        ("[metrics]\nlisten = 'localhost'\n", "metrics.listen: 'localhost' is not HOST:PORT"),
        ("[metrics]\nlisten = '127.0.0.1:99999'\n", "metrics.listen: port 99999 in '127.0.0.1:99999' is outside 0..65535"),
        ("[metrics]\nlisten = 'example.com:9842'\n", "is not an IP address or 'localhost'"),
        ("metrics = 3\n", "metrics: expected a table, got int"),
    ],
)
def test_invalid_values_are_refused_with_the_key_and_the_allowed_values(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert message in str(caught.value)
    assert str(tmp_path / "gputuned.toml") in str(caught.value)


def test_broken_toml_is_refused_with_the_position(tmp_path):
    with pytest.raises(ConfigError, match=r"is not valid TOML: .*line 1"):
        load_config(write(tmp_path, "[metrics\n"))


def test_an_explicit_path_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config .*No such file"):
        load_config(tmp_path / "missing.toml")


def test_overrides_are_validated_like_the_file():
    config = with_overrides(Config(), metrics={"listen": "127.0.0.1:0"})
    assert config.metrics.address == ("127.0.0.1", 0)
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        with_overrides(Config(), metrics={"listen": "nonsense"})


def test_listen_address_forms():
    assert parse_listen_address("[::1]:9842") == ("::1", 9842)
    assert parse_listen_address("localhost:1") == ("localhost", 1)
    with pytest.raises(ValueError, match="not a number"):
        parse_listen_address("127.0.0.1:http")


def test_metrics_and_the_inference_api_bind_to_loopback_unless_told_otherwise():
    from gputuned.cli import build_parser

    config = Config()
    assert parse_listen_address(config.metrics.listen)[0] == "127.0.0.1"
    assert parse_listen_address(WorkerConfig().listen)[0] == "127.0.0.1"
    worker = build_parser().parse_args(["worker"])
    assert parse_listen_address(worker.listen)[0] == "127.0.0.1"


def test_a_fresh_config_names_no_worker_and_so_changes_nothing():
    assert Config().worker_definitions(gpu_count=8) == () and Config().first_worker is None
    assert load_config(REPO_ROOT / "systemd" / "gputuned.toml").worker_definitions(8) == ()
    (demo,) = load_config(REPO_ROOT / "scripts" / "demo.toml").worker_definitions(0)
    assert demo.model == "resnet-mini" and tuner_mode(demo, TuningConfig()) == "auto"


def test_a_server_the_operator_runs_is_tuned_in_recommend_mode_unless_the_config_says_otherwise():
    started, attached = WorkerConfig(), WorkerConfig(kind="triton", model="m")
    assert attached.attached and not started.attached
    assert tuner_mode(started, TuningConfig()) == "auto"
    assert tuner_mode(attached, TuningConfig()) == "recommend"
    assert tuner_mode(attached, TuningConfig(mode="auto")) == "auto"  # [tuning] for every worker without its own
    assert tuner_mode(WorkerConfig(kind="triton", model="m", mode="frozen"), TuningConfig(mode="auto")) == "frozen"
    with pytest.raises(ConfigError, match=r"worker\.mode: 'sometimes' is not allowed; allowed values: auto, recommend, frozen"):
        config_from_mapping({"worker": {"mode": "sometimes"}})


@pytest.mark.parametrize(
    ("path", "setting"),
    [
        ("/home/ops/venv/bin/gputuned", "ProtectHome=yes"),
        ("/root/.pyenv/versions/3.11.7/bin/python3.11", "ProtectHome=yes"),
        ("/run/user/1000/gputuned", "ProtectHome=yes"),
        ("/tmp/gputuned/bin/gputuned", "PrivateTmp=yes"),
        ("/var/tmp/venv/bin/python", "PrivateTmp=yes"),
        ("/opt/gputuned/bin/gputuned", None),
        ("/usr/local/bin/gputuned", None),
        ("/homework/gputuned", None),
    ],
)
def test_the_units_sandbox_hides_home_root_run_user_and_the_temporary_directories(path, setting):
    why = hidden_by_the_unit(Path(path))
    assert (why is None) if setting is None else (why is not None and setting in why)
