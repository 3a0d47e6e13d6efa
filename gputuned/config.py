"""The one typed configuration, read once at the edge (the CLI) and passed down.

Sections and keys are dataclasses; their field metadata declare bounds and choices, and
`load_config` checks every key of the TOML file against them, so a typo or a wrong value
is an error that names the key and what it accepts instead of a silent default.
We validate by hand rather than with pydantic: the schema is small, the messages must
list the allowed keys, and the daemon stays light (see README, "Choices").
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from gputuned.tuners.mode import MODE_NAMES

DEFAULT_CONFIG_PATH = Path("/etc/gputuned/gputuned.toml")
DEFAULT_METRICS_PORT = 9842


class ConfigError(ValueError):
    """An invalid configuration; the message names the offending key."""


def _bounded(default: Any, low: float | None = None, high: float | None = None) -> Any:
    return field(default=default, metadata={"min": low, "max": high})


def _choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": choices})


def parse_listen_address(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port); raises ValueError saying what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} in {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} in {text!r} is outside 0..65535")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"host {host!r} in {text!r} is not an IP address or 'localhost'") from None
    return host, port


@dataclass(frozen=True)
class MetricsConfig:
    """Where /metrics is served. Loopback by default: binding elsewhere exposes host details."""

    listen: str = f"127.0.0.1:{DEFAULT_METRICS_PORT}"

    def __post_init__(self) -> None:
        try:
            parse_listen_address(self.listen)
        except ValueError as exc:
            raise ConfigError(f"metrics.listen: {exc}; expected HOST:PORT, e.g. 127.0.0.1:{DEFAULT_METRICS_PORT}") from None

    @property
    def address(self) -> tuple[str, int]:
        return parse_listen_address(self.listen)


@dataclass(frozen=True)
class SamplingConfig:
    interval_seconds: float = _bounded(1.0, 0.1, 3600.0)
    window_samples: int = _bounded(300, 2, 100_000)


@dataclass(frozen=True)
class CollectorsConfig:
    """Which collectors run; all read the machine and never change it."""

    nvml: bool = True
    pcie: bool = True
    numa: bool = True
    host: bool = True


@dataclass(frozen=True)
class NvmlConfig:
    """The NVML binding: `pynvml` (nvidia-ml-py), or `module:factory` returning a stand-in
    with pynvml's API (the test suite and benchmarks use their fake NVML this way)."""

    module: str = "pynvml"


@dataclass(frozen=True)
class PathsConfig:
    """Roots the collectors read from, and the daemon's own directories.

    The runtime and state defaults are what systemd's RuntimeDirectory=gputuned and
    StateDirectory=gputuned create."""

    proc_root: str = "/proc"
    sys_root: str = "/sys"
    runtime_dir: str = "/run/gputuned"
    state_dir: str = "/var/lib/gputuned"


def _check_placement(value: str) -> None:
    if value not in ("auto", "off") and not value.isdigit():
        raise ConfigError(f"worker.placement: {value!r} is not allowed; allowed values: auto, off, or a NUMA node number")


@dataclass(frozen=True)
class WorkerConfig:
    """The inference worker `gputuned run` starts and supervises.

    With an empty `command` it runs the built-in worker (`gputuned worker`) with the
    settings below; otherwise `command` is run as is, with GPUTUNED_CONTROL_SOCKET in its
    environment and '{control_socket}' in its arguments replaced by the socket path.
    """

    command: list = field(default_factory=list)
    model: str = "resnet-mini"
    device: str = "auto"
    input_shape: str = ""
    input_dtype: str = "FP32"
    listen: str = "127.0.0.1:8000"
    placement: str = "auto"
    control_group: str = ""
    ping_interval_seconds: float = _bounded(2.0, 0.1, 60.0)
    ping_timeout_seconds: float = _bounded(10.0, 0.5, 600.0)
    restart_backoff_seconds: float = _bounded(0.5, 0.0, 60.0)
    restart_backoff_max_seconds: float = _bounded(30.0, 0.0, 3600.0)
    crash_loop_exits: int = _bounded(5, 1, 1000)
    crash_loop_window_seconds: float = _bounded(60.0, 1.0, 86400.0)
    drain_timeout_seconds: float = _bounded(30.0, 0.0, 3600.0)

    def __post_init__(self) -> None:
        _check_placement(self.placement)
        if not all(isinstance(word, str) for word in self.command):
            raise ConfigError("worker.command: expected a list of strings")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"worker.device: {self.device!r} is not allowed; allowed values: auto, cpu, cuda, cuda:N")
        try:
            parse_listen_address(self.listen)
        except ValueError as exc:
            raise ConfigError(f"worker.listen: {exc}") from None


@dataclass(frozen=True)
class TuningConfig:
    """The autotuning loop: what it optimises and how carefully it changes things."""

    mode: str = _choice("auto", *MODE_NAMES)
    slo_p99_ms: float = _bounded(100.0, 0.1, 600_000.0)
    interval_seconds: float = _bounded(0.5, 0.1, 60.0)
    baseline_seconds: float = _bounded(3.0, 0.5, 600.0)
    warmup_seconds: float = _bounded(1.0, 0.0, 600.0)
    trial_seconds: float = _bounded(3.0, 0.5, 600.0)
    cooldown_seconds: float = _bounded(0.5, 0.0, 600.0)
    min_margin: float = _bounded(0.03, 0.0, 1.0)
    flap_reverts: int = _bounded(3, 1, 100)
    flap_window_seconds: float = _bounded(300.0, 1.0, 86400.0)
    shift_threshold: float = _bounded(0.5, 0.05, 100.0)


@dataclass(frozen=True)
class LogConfig:
    level: str = _choice("info", "debug", "info", "warning", "error")


@dataclass(frozen=True)
class Config:
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    collectors: CollectorsConfig = field(default_factory=CollectorsConfig)
    nvml: NvmlConfig = field(default_factory=NvmlConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    log: LogConfig = field(default_factory=LogConfig)


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}


def _check_value(key: str, value: Any, expected: type, meta: dict[str, Any]) -> Any:
    # bool is a subclass of int in Python; TOML keeps them apart, and so do we.
    type_ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value, type_ok = float(value), True
    if not type_ok:
        raise ConfigError(f"{key}: expected {_TYPE_NAMES[expected]}, got {type(value).__name__} {value!r}")
    low, high, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{key}: {value!r} is out of range; allowed {low}..{high}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {', '.join(choices)}")
    return value


def _build(cls: Any, table: Any, prefix: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {type(table).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    for key in table:
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown key; allowed keys: {', '.join(fields)}")
    values = {}
    for name, value in table.items():
        expected = hints[name]
        if isinstance(expected, type) and dataclasses.is_dataclass(expected):
            values[name] = _build(expected, value, f"{prefix}{name}.")
        else:
            values[name] = _check_value(f"{prefix}{name}", value, expected, dict(fields[name].metadata))
    return cls(**values)


def config_from_mapping(data: dict[str, Any]) -> Config:
    """Validates an already-parsed TOML document (also used for command-line overrides)."""
    return _build(Config, data, "")


def load_config(path: Path | None) -> Config:
    """Reads and validates the config file.

    An explicit `path` must exist; with None, the default path is used when present and
    the built-in defaults otherwise (a fresh install runs without any file).
    """
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return Config()
        path = DEFAULT_CONFIG_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not UTF-8: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    try:
        return config_from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def with_overrides(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy of `config` with some keys replaced, validated like the file was."""
    merged = dataclasses.asdict(config)
    for section, values in sections.items():
        merged[section].update(values)
    return config_from_mapping(merged)
