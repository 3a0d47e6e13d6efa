"""The one typed configuration, read once at the edge (the CLI) and passed down.

Sections and keys are dataclasses; their field metadata declare bounds and choices, and
`load_config` checks every key of the TOML file against them, so a typo or a wrong value
is an error that names the key and what it accepts instead of a silent default.
We validate by hand rather than with pydantic: the schema is small, the messages must
list the allowed keys, and the daemon stays light (docs/choices.md).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from gputuned.inputs import parse_input_text
from gputuned.procfs import ParseError, parse_cpulist
from gputuned.tuners.mode import MODE_NAMES
from gputuned.tuners.verdict import OBJECTIVES

DEFAULT_CONFIG_PATH = Path("/etc/gputuned/gputuned.toml")
DEFAULT_METRICS_PORT = 9842


class ConfigError(ValueError):
    """An invalid configuration; the message names the offending key."""


def _key(default: Any, doc: str, low: float | None = None, high: float | None = None, choices: tuple[str, ...] = ()) -> Any:
    """A config key: its default, what it does (docs/configuration.md is generated from it),
    and the range or the choices `load_config` holds a value to."""
    metadata = {"doc": doc, "min": low, "max": high, "choices": choices or None}
    if isinstance(default, list):
        return field(default_factory=list, metadata=metadata)
    return field(default=default, metadata=metadata)


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

    listen: str = _key(f"127.0.0.1:{DEFAULT_METRICS_PORT}", "HOST:PORT of /metrics and the status page")

    def __post_init__(self) -> None:
        try:
            parse_listen_address(self.listen)
        except ValueError as exc:
            raise ConfigError(f"listen: {exc}; expected HOST:PORT, e.g. 127.0.0.1:{DEFAULT_METRICS_PORT}") from None

    @property
    def address(self) -> tuple[str, int]:
        return parse_listen_address(self.listen)


@dataclass(frozen=True)
class SamplingConfig:
    """How often the collectors read the machine, and how much of it is kept for the tuners."""

    interval_seconds: float = _key(1.0, "seconds between two sampling rounds", 0.1, 3600.0)
    window_samples: int = _key(300, "points kept in memory per series (the tuners' and the status page's history)", 2, 100_000)


@dataclass(frozen=True)
class CollectorsConfig:
    """Which collectors run; all read the machine and never change it."""

    nvml: bool = _key(True, "GPUs through NVML: utilisation, memory, power, energy per worker, clocks, ECC, XID")
    gpm: bool = _key(True, "GPM profiling counters (Hopper and newer); logs once and stays quiet elsewhere")
    pcie: bool = _key(True, "PCIe bytes, link generation and width, utilisation, replays")
    numa: bool = _key(True, "the NUMA memory system and each worker's off-node pages")
    host: bool = _key(True, "per-core CPU busy, memory, each worker's CPU, memory and threads")
    kubelet: bool = _key(True, "the pods holding and using each GPU; off by itself where there is no kubelet socket")


@dataclass(frozen=True)
class NvmlConfig:
    """The NVML binding: `pynvml` (nvidia-ml-py), or `module:factory` returning a stand-in
    with pynvml's API (the test suite and benchmarks use their fake NVML this way)."""

    module: str = _key("pynvml", "the NVML binding: `pynvml`, or `module:factory` returning a stand-in with its API")


@dataclass(frozen=True)
class PathsConfig:
    """Roots the collectors read from, and the daemon's own directories.

    The runtime and state defaults are what systemd's RuntimeDirectory=gputuned and
    StateDirectory=gputuned create."""

    proc_root: str = _key("/proc", "where /proc is read (a container reads the host's, mounted elsewhere)")
    sys_root: str = _key("/sys", "where /sys is read")
    kubelet_socket: str = _key("/var/lib/kubelet/pod-resources/kubelet.sock", "the kubelet's PodResources API socket")
    pod_logs_dir: str = _key("/var/log/pods", "the kubelet's pod log directories (their names give each pod's namespace)")
    runtime_dir: str = _key("/run/gputuned", "the admin socket and the workers' control sockets")
    state_dir: str = _key("/var/lib/gputuned", "accepted knobs and decision logs, kept across restarts")


def _check_placement(value: str) -> None:
    if value not in ("auto", "off") and not value.isdigit():
        raise ConfigError(f"placement: {value!r} is not allowed; allowed values: auto, off, or a NUMA node number")


def _check_name(value: str) -> None:
    """A worker's name is a metric label, part of a socket's and a state file's name."""
    if not value or len(value) > 64 or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in value) or value[0] == ".":
        raise ConfigError(f"name: {value!r} is not allowed; use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'")


def _check_cpus(value: str) -> None:
    if not value:
        return
    try:
        cpus = parse_cpulist(value)
    except ParseError as exc:
        raise ConfigError(f"cpus: {value!r} is not a CPU list like '0-3,8': {exc}") from None
    if not cpus:
        raise ConfigError(f"cpus: {value!r} names no CPU")


@dataclass(frozen=True)
class WorkerConfig:
    """The inference worker `gputuned run` starts and supervises.

    With an empty `command` it runs the built-in worker (`gputuned worker`) with the
    settings below; otherwise `command` is run as is, with GPUTUNED_CONTROL_SOCKET in its
    environment and '{control_socket}' in its arguments replaced by the socket path.

    With kind "triton" the worker is a model of a Triton Inference Server (`model` names it,
    `listen` is Triton's HTTP address): with `triton_server` set, gputuned starts that
    tritonserver on `triton_repository` and owns it; without, it attaches to the Triton
    running at `listen` and tunes it (gputuned/triton/).

    With kind "vllm" the worker is a vLLM server (`listen` is its HTTP address): with
    `vllm_python` set, gputuned starts vLLM's OpenAI-compatible server on `model` (a
    directory or a Hugging Face name) with that Python and owns it; without, it attaches to
    the vLLM running at `listen`, and moves its knobs through `vllm_plugin_socket`
    (gputuned/vllm/).
    """

    name: str = _key("worker", "names it in metrics, status, logs, `--worker`, its socket and state files")
    kind: str = _key(
        "builtin",
        "the server: the built-in worker (or your `command`), a Triton model, or a vLLM",
        choices=("builtin", "triton", "vllm"),
    )
    command: list = _key([], "your own server's command, embedding the agent; empty: the built-in worker")
    model: str = _key(
        "resnet-mini",
        "the built-in worker's model (a name, `module:factory`, a torch.export archive); Triton's model name; vLLM's model directory or name",
    )
    device: str = _key("auto", "`auto`, `cpu`, `cuda` or `cuda:N`; also which GPU's signals the tuner reads")
    input_shape: str = _key("", "one fixed-shape input's dimensions, e.g. `3,224,224`, where the model does not say")
    input_dtype: str = _key("FP32", "that input's datatype")
    inputs: list = _key(
        [], "the model's inputs, `NAME:DATATYPE:DIMS[:mask]` each, in order (-1: the sequence); empty: the model's own signature"
    )
    max_length: int = _key(0, "the longest sequence served; 0: the model's", 0, 1 << 20)
    listen: str = _key(
        "127.0.0.1:8000", "HOST:PORT the server answers inference on (Triton's or vLLM's HTTP address for those kinds)"
    )
    placement: str = _key("auto", "`auto` (its GPU's NUMA node), `off`, or a NUMA node number")
    cpus: str = _key("", "an explicit CPU set (`0-3,8`) instead of a whole NUMA node's CPUs")
    gpu_memory_fraction: float = _key(
        1.0,
        "the most of its GPU's memory the built-in worker may take, so that workers sharing a GPU cannot starve each other",
        0.01,
        1.0,
    )
    control_group: str = _key("", "a group whose members may also use the worker's control socket (mode 0660)")
    ping_interval_seconds: float = _key(2.0, "seconds between health pings", 0.1, 60.0)
    ping_timeout_seconds: float = _key(10.0, "a worker silent this long counts as hung and is restarted", 0.5, 600.0)
    restart_backoff_seconds: float = _key(0.5, "the first wait before a restart; it doubles with each exit", 0.0, 60.0)
    restart_backoff_max_seconds: float = _key(30.0, "the longest wait before a restart", 0.0, 3600.0)
    crash_loop_exits: int = _key(5, "this many exits within crash_loop_window_seconds stop the restarts", 1, 1000)
    crash_loop_window_seconds: float = _key(60.0, "the window crash_loop_exits are counted in", 1.0, 86400.0)
    drain_timeout_seconds: float = _key(30.0, "how long a stopping worker may finish its requests", 0.0, 3600.0)
    start_timeout_seconds: float = _key(
        0.0,
        "how long a start may take before the worker counts as hung; 0: 120 s, or 600 s for a Triton or vLLM gputuned starts",
        0.0,
        86400.0,
    )
    triton_server: str = _key("", "the tritonserver binary gputuned starts; empty: attach to the Triton at `listen`")
    triton_repository: str = _key("", "the model repository: the started server's, or the attached one's for write-back")
    triton_args: list = _key([], "more tritonserver arguments")
    triton_metrics_url: str = _key("", "Triton's /metrics; empty: `listen`'s host, its port + 2 (Triton's default layout)")
    triton_access_token_file: str = _key("", "a file holding the token of a restricted repository API")
    triton_write_back: bool = _key(
        False,
        "write each accepted set of knobs into the model's config.pbtxt (the previous file kept beside it), "
        "so a restarted Triton comes back with them",
    )
    vllm_python: str = _key(
        "", "the Python of vLLM's environment gputuned starts vLLM with; empty: attach to the vLLM at `listen`"
    )
    vllm_args: list = _key([], "more arguments for the vLLM server gputuned starts")
    vllm_plugin_socket: str = _key(
        "",
        "an attached vLLM's plugin socket (vLLM runs with GPUTUNED_VLLM_SOCKET set to it); without one, its knobs are read-only",
    )
    slo_p99_ms: float = _key(0.0, "this worker's p99 latency objective; 0: [tuning]'s", 0.0, 600_000.0)
    slo_ttft_ms: float = _key(0.0, "this LLM worker's time-to-first-token objective; 0: [tuning]'s", 0.0, 600_000.0)
    slo_tpot_ms: float = _key(0.0, "this LLM worker's time-per-output-token objective; 0: [tuning]'s", 0.0, 60_000.0)
    mode: str = _key(
        "",
        "this worker's tuner mode; empty: [tuning]'s, else `auto` for a server gputuned starts and `recommend` for one it attaches to",
        choices=MODE_NAMES,
    )

    @property
    def start_timeout(self) -> float:
        if self.start_timeout_seconds:
            return self.start_timeout_seconds
        return 600.0 if self.kind in ("triton", "vllm") else 120.0

    @property
    def attached(self) -> bool:
        """A server the operator already runs (a Triton gputuned did not start), not one gputuned starts."""
        return (self.kind == "triton" and not self.triton_server) or (self.kind == "vllm" and not self.vllm_python)

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_triton(self)
        _check_vllm(self)
        _check_placement(self.placement)
        _check_cpus(self.cpus)
        if not all(isinstance(word, str) for word in self.command):
            raise ConfigError("command: expected a list of strings")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device: {self.device!r} is not allowed; allowed values: auto, cpu, cuda, cuda:N")
        if self.device == "cpu" and self.gpu_memory_fraction < 1.0:
            raise ConfigError("gpu_memory_fraction: caps a GPU's memory, and this worker's device is cpu")
        try:
            parse_listen_address(self.listen)
        except ValueError as exc:
            raise ConfigError(f"listen: {exc}") from None
        _check_inputs(self)


def _check_inputs(worker: WorkerConfig) -> None:
    if not all(isinstance(text, str) for text in worker.inputs):
        raise ConfigError('inputs: expected a list of strings, e.g. ["input_ids:INT64:-1"]')
    if worker.inputs and worker.input_shape:
        raise ConfigError("inputs: give either inputs or input_shape, not both")
    for text in worker.inputs:
        try:
            parse_input_text(text)
        except ValueError as exc:
            raise ConfigError(f"inputs: {exc}") from None


def _server_kind(worker: WorkerConfig, kind: str, label: str) -> bool:
    """What the settings of every server kind share: its `{kind}_` settings only on a worker of
    that kind, its argument list of strings, no `command`, a port. True for a worker of it."""
    if not all(isinstance(word, str) for word in getattr(worker, f"{kind}_args")):
        raise ConfigError(f"{kind}_args: expected a list of strings")
    if worker.kind != kind:
        settings = [f.name for f in dataclasses.fields(worker) if f.name.startswith(f"{kind}_") and getattr(worker, f.name)]
        if settings:
            raise ConfigError(f"{settings[0]}: set only for a worker of kind '{kind}'")
        return False
    if worker.command:
        raise ConfigError(f"command: a worker of kind '{kind}' runs gputuned's {label} adapter; leave command empty")
    if parse_listen_address(worker.listen)[1] == 0:
        raise ConfigError(f"listen: a {label} worker needs {label}'s HTTP port")
    return True


def _check_triton(worker: WorkerConfig) -> None:
    if not _server_kind(worker, "triton", "Triton"):
        return
    if worker.triton_server and not worker.triton_repository:
        raise ConfigError("triton_repository: needed with triton_server (the model repository the server serves)")
    if worker.triton_write_back and not worker.triton_repository:
        raise ConfigError("triton_write_back: needs triton_repository, the repository the model's config.pbtxt is in")
    if worker.triton_repository and not (worker.triton_server or worker.triton_write_back):
        raise ConfigError(
            "triton_repository: only with triton_server or triton_write_back; an attached Triton has its own repository"
        )


def _check_vllm(worker: WorkerConfig) -> None:
    if not _server_kind(worker, "vllm", "vLLM"):
        return
    if worker.vllm_python and worker.vllm_plugin_socket:
        raise ConfigError("vllm_plugin_socket: only for an attached vLLM; gputuned gives the one it starts its own socket")
    if worker.vllm_args and not worker.vllm_python:
        raise ConfigError("vllm_args: only with vllm_python; an attached vLLM has its own arguments")


@dataclass(frozen=True)
class TuningConfig:
    """The autotuning loop: what it optimises and how carefully it changes things."""

    mode: str = _key(
        "",
        "every worker's tuner mode that sets none of its own: `auto` changes knobs, `recommend` says what it would change, `frozen` only watches",
        choices=MODE_NAMES,
    )
    # On vLLM's bucket bounds (TTFT 0.25, 0.5, 1, 2.5 s...; TPOT 25, 50, 75, 100, 150 ms...)
    # nothing is lost to the buckets.
    slo_p99_ms: float = _key(100.0, "the p99 latency objective; goodput counts the requests within it", 0.1, 600_000.0)
    slo_ttft_ms: float = _key(
        1000.0,
        "an LLM worker's time-to-first-token objective; goodput counts the requests within both this and slo_tpot_ms",
        1.0,
        600_000.0,
    )
    slo_tpot_ms: float = _key(100.0, "an LLM worker's time-per-output-token objective", 1.0, 60_000.0)
    objective: str = _key(
        "goodput",
        "what a change must raise within the objectives: goodput, or goodput per watt of the worker's GPU energy "
        "(judged by goodput without an energy reading); under overload, throughput either way",
        choices=OBJECTIVES,
    )
    interval_seconds: float = _key(0.5, "seconds between two steps of each worker's tuning loop", 0.1, 60.0)
    baseline_seconds: float = _key(
        3.0, "the settled window a change is compared against (stretched to five median request latencies)", 0.5, 600.0
    )
    warmup_seconds: float = _key(1.0, "the wait after a set before the trial window (at least the p99 latency)", 0.0, 600.0)
    trial_seconds: float = _key(3.0, "the window a change is judged on", 0.5, 600.0)
    cooldown_seconds: float = _key(0.5, "the pause after a decision", 0.0, 600.0)
    min_margin: float = _key(0.03, "the least share a change must beat the baseline by, however quiet the noise", 0.0, 1.0)
    flap_reverts: int = _key(3, "a knob reverted this many times within flap_window_seconds is left alone", 1, 100)
    flap_window_seconds: float = _key(300.0, "the window flap_reverts are counted in", 1.0, 86400.0)
    shift_threshold: float = _key(
        0.5,
        "a change of the arrival rate by this share, not caused by the tuner, is a new workload: exploration starts again",
        0.05,
        100.0,
    )
    confirm_windows: int = _key(8, "the most windows an interleaved verdict takes (2: none)", 2, 64)
    explore_patience: int = _key(4, "explore trials in a row without a keep before the search converges", 1, 1000)
    reexplore_seconds: float = _key(600.0, "converged this long, every direction is tried again", 1.0, 604800.0)
    trials: str = _key(
        "one_per_host",
        "workers take turns to run trials: one at a time on the host, or one per NUMA node",
        choices=("one_per_host", "one_per_numa_node"),
    )


@dataclass(frozen=True)
class LogConfig:
    """What the daemon logs (to the journal under systemd)."""

    level: str = _key("info", "the log level", choices=("debug", "info", "warning", "error"))


AT_RESTART = "when the daemon restarts"
AT_WORKER_START = "at the worker's next start (adding or removing a worker: when the daemon restarts)"
# When a change to each section takes effect on SIGHUP (`systemctl reload gputuned`); an
# invalid file is refused whole and the running configuration kept.
ON_RELOAD = {
    "metrics": AT_RESTART,
    "sampling": "at once",
    "collectors": AT_RESTART,
    "nvml": AT_RESTART,
    "paths": AT_RESTART,
    "worker": AT_WORKER_START,
    "workers": AT_WORKER_START,
    "workers_per_gpu": AT_WORKER_START,
    "tuning": "at each worker's next tuning step",
    "log": "at once",
}


@dataclass(frozen=True)
class Config:
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    collectors: CollectorsConfig = field(default_factory=CollectorsConfig)
    nvml: NvmlConfig = field(default_factory=NvmlConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    # One worker ([worker], named "worker"), several named ones ([[workers]]), or one per
    # visible GPU ([workers_per_gpu]). None of them: gputuned monitors and changes nothing.
    worker: WorkerConfig | None = None
    tuning: TuningConfig = field(default_factory=TuningConfig)
    log: LogConfig = field(default_factory=LogConfig)
    workers: tuple[WorkerConfig, ...] = ()
    workers_per_gpu: WorkerConfig | None = None

    @property
    def first_worker(self) -> WorkerConfig | None:
        """The first worker's definition, known before the GPUs are counted: the first of
        [[workers]], the [workers_per_gpu] template, or [worker]; None without any."""
        return self.workers[0] if self.workers else self.workers_per_gpu or self.worker

    def worker_definitions(self, gpu_count: int) -> tuple[WorkerConfig, ...]:
        """The workers to supervise on a host with `gpu_count` GPUs; none unless the config names some."""
        if self.workers:
            return self.workers
        if self.workers_per_gpu is not None:
            return expand_per_gpu(self.workers_per_gpu, gpu_count)
        return () if self.worker is None else (self.worker,)


def tuner_mode(worker: WorkerConfig, tuning: TuningConfig) -> str:
    """The mode a worker's tuner starts in: the worker's own, else [tuning]'s, else by who runs
    the server: auto for one gputuned starts, recommend (changes nothing, says what it would
    do) for one the operator already runs."""
    return worker.mode or tuning.mode or ("recommend" if worker.attached else "auto")


def expand_per_gpu(template: WorkerConfig, gpu_count: int) -> tuple[WorkerConfig, ...]:
    """One worker per GPU: named gpuN, on cuda:N, listening on the template's port + N, and
    (with placement "auto") placed on that GPU's NUMA node."""
    host, port = parse_listen_address(template.listen)
    where = f"[{host}]" if ":" in host else host
    if port and port + gpu_count - 1 > 65535:
        raise ConfigError(f"workers_per_gpu.listen: ports {port}..{port + gpu_count - 1} for {gpu_count} GPUs run past 65535")
    workers = tuple(
        dataclasses.replace(template, name=f"gpu{index}", device=f"cuda:{index}", listen=f"{where}:{port + index if port else 0}")
        for index in range(gpu_count)
    )
    check_distinct(workers, "workers_per_gpu")
    return workers


def check_distinct(workers: tuple[WorkerConfig, ...], where: str) -> None:
    """Two workers may share neither a name (which names their sockets and state files) nor
    an inference port; the error names both."""
    names: dict[str, int] = {}
    ports: dict[tuple[str, int], str] = {}
    for index, worker in enumerate(workers):
        if worker.name in names:
            raise ConfigError(
                f"{where}[{index}].name: {worker.name!r} is also the name of {where}[{names[worker.name]}]; "
                "each worker needs its own (it names its socket and state files)"
            )
        names[worker.name] = index
        host, port = parse_listen_address(worker.listen)
        if port == 0:
            continue  # the kernel picks a free port for each
        for (other_host, other_port), other in ports.items():
            wildcard = {"0.0.0.0", "::"} & {host, other_host}
            if port == other_port and (host == other_host or wildcard):
                raise ConfigError(
                    f"{where}[{index}].listen: worker {worker.name!r} and worker {other!r} both listen on port {port}"
                )
        ports[(host, port)] = worker.name


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
    try:
        return cls(**values)
    except ConfigError as exc:  # a check across keys (a section's own __post_init__)
        raise ConfigError(f"{prefix}{exc}") from None


def _build_workers(data: dict[str, Any]) -> dict[str, Any]:
    """[worker], [[workers]] and [workers_per_gpu], which the generic builder does not cover."""
    built: dict[str, Any] = {}
    given = [section for section in ("worker", "workers", "workers_per_gpu") if section in data]
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(given)}: use one of [worker], [[workers]] or [workers_per_gpu]")
    tables = data.get("workers")
    if tables is not None:
        if not isinstance(tables, list) or not tables:
            raise ConfigError("workers: expected one or more [[workers]] tables")
        workers = []
        for index, table in enumerate(tables):
            label = f"workers[{index}]" + (
                f" ({table['name']})" if isinstance(table, dict) and isinstance(table.get("name"), str) else ""
            )
            if isinstance(table, dict) and "name" not in table:
                raise ConfigError(f"{label}: missing key 'name'; every worker of [[workers]] is named")
            workers.append(_build(WorkerConfig, table, f"{label}."))
        built["workers"] = tuple(workers)
        check_distinct(built["workers"], "workers")
    if "worker" in data:
        built["worker"] = _build(WorkerConfig, data["worker"], "worker.")
    template = data.get("workers_per_gpu")
    if template is not None:
        if isinstance(template, dict) and ("name" in template or "device" in template):
            raise ConfigError("workers_per_gpu: 'name' and 'device' are set per GPU (gpuN on cuda:N); leave them out")
        built["workers_per_gpu"] = _build(WorkerConfig, template, "workers_per_gpu.")
    return built


def config_from_mapping(data: dict[str, Any]) -> Config:
    """Validates an already-parsed TOML document."""
    sections = {key: value for key, value in data.items() if key not in ("worker", "workers", "workers_per_gpu")}
    return dataclasses.replace(_build(Config, sections, ""), **_build_workers(data))


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
    """A copy of `config` with some keys of some sections replaced, validated like the file was
    (the command line's overrides)."""
    changes = {}
    for section, values in sections.items():
        current = getattr(config, section)
        changes[section] = _build(type(current), {**dataclasses.asdict(current), **values}, f"{section}.")
    return dataclasses.replace(config, **changes)
