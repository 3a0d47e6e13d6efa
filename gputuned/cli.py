"""The `gputuned` command. Thin: parses arguments, builds the config, calls in."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from gputuned import __version__
from gputuned.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config, with_overrides
from gputuned.triton.adapter import add_arguments as add_adapter_arguments
from gputuned.tuners.mode import MODE_NAMES
from gputuned.vllm.adapter import add_arguments as add_vllm_adapter_arguments


def _add_admin_arguments(parser: argparse.ArgumentParser, socket_help: str) -> None:
    """--config and --socket: how a client command finds the daemon's admin socket."""
    parser.add_argument("--config", type=Path, help="finds the daemon's admin socket (paths.runtime_dir)")
    parser.add_argument("--socket", type=Path, metavar="PATH", help=socket_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gputuned",
        description="Monitors the GPUs, PCIe and NUMA of an inference host, exports them as Prometheus metrics, "
        "and supervises and tunes the inference servers on it.",
        epilog="Operator commands come first (run, status, set, tune, restart, check-config, install, uninstall), then the "
        "tools (worker, load, sweep, dashboards, triton-example, vllm-plugin). `gputuned COMMAND --help` describes each.",
    )
    parser.add_argument("--version", action="version", version=f"gputuned {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon in the foreground: sample, export /metrics")
    run.add_argument("--config", type=Path, help=f"TOML config file (default {DEFAULT_CONFIG_PATH} if it exists)")
    run.add_argument("--metrics-listen", metavar="HOST:PORT", help="where to serve /metrics (overrides metrics.listen)")
    run.add_argument("--no-worker", action="store_true", help="monitor only; do not start and supervise a worker")
    run.add_argument("--runtime-dir", type=Path, help="sockets live here (overrides paths.runtime_dir)")
    run.add_argument("--state-dir", type=Path, help="accepted knobs persist here (overrides paths.state_dir)")
    run.add_argument(
        "--worker-pid", type=int, metavar="PID", help="watch this process as the worker (one gputuned does not start)"
    )
    run.add_argument("--worker-gpu", type=int, metavar="INDEX", help="NVML index of the GPU the watched worker uses")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="overrides log.level")
    run.add_argument("--nvml-module", metavar="MODULE[:FACTORY]", help="NVML binding (overrides nvml.module)")

    status = commands.add_parser("status", help="show the GPUs and every worker: state, knobs, throughput, p99 against its SLO")
    _add_admin_arguments(status, "the daemon's admin socket (default RUNTIME_DIR/admin.sock)")
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    status.add_argument("--watch", type=float, metavar="SECONDS", help="show it again every SECONDS until interrupted")

    knob_set = commands.add_parser("set", help="set worker knobs by hand (through the daemon, or a worker's own socket)")
    _add_admin_arguments(knob_set, "a control socket: the daemon's admin.sock (default) or a worker's own")
    knob_set.add_argument("--worker", metavar="NAME", help="which of the daemon's workers (needed when it runs several)")
    knob_set.add_argument("assignments", nargs="+", metavar="KNOB=VALUE")

    tune = commands.add_parser("tune", help="change the tuner's mode, or let it tune knobs set by hand again")
    _add_admin_arguments(tune, "the daemon's admin socket (default RUNTIME_DIR/admin.sock)")
    tune.add_argument("--mode", choices=MODE_NAMES, help="auto, recommend (dry run) or frozen")
    tune.add_argument("--resume", action="store_true", help="tune again the knobs set by hand")
    tune.add_argument("--worker", metavar="NAME", help="which of the daemon's workers (needed when it runs several)")

    restart = commands.add_parser(
        "restart", help="start one worker afresh: out of a crash loop, or drained and started again; no other is touched"
    )
    _add_admin_arguments(restart, "the daemon's admin socket (default RUNTIME_DIR/admin.sock)")
    restart.add_argument("--worker", metavar="NAME", help="which of the daemon's workers (needed when it runs several)")

    check = commands.add_parser("check-config", help="validate a config file (names the file it checked) and exit")
    check.add_argument("--config", type=Path, help=f"TOML config file (default {DEFAULT_CONFIG_PATH} if it exists)")

    install = commands.add_parser("install", help="install the systemd unit and the example config (monitors only)")
    install.add_argument("--root", type=Path, default=Path("/"), help="install below this directory (default /)")
    install.add_argument("--exec", dest="executable", metavar="COMMAND", help="the gputuned to run (default: this one)")
    install.add_argument("--grafana", action="store_true", help="also the Grafana dashboards and provisioning files")

    uninstall = commands.add_parser("uninstall", help="remove what install wrote; the config and state stay unless --purge")
    uninstall.add_argument("--root", type=Path, default=Path("/"), help="uninstall below this directory (default /)")
    uninstall.add_argument("--purge", action="store_true", help="also remove the config and the state (accepted knobs)")

    worker = commands.add_parser("worker", help="serve a PyTorch model over the v2 inference API (needs the [worker] extra)")
    worker.add_argument(
        "--model",
        default="resnet-mini",
        metavar="SPEC",
        help="resnet-mini (built in), a TorchScript .pt/.ts file, a torch.export .pt2 archive, or module:factory",
    )
    worker.add_argument("--model-name", help="name served under /v2/models/ (default: from the spec)")
    worker.add_argument(
        "--input-shape", metavar="D1,D2,...", help="input shape without the batch dimension (required for your own model)"
    )
    worker.add_argument("--input-dtype", default="FP32", help="input datatype, e.g. FP32, FP16, INT64 (default FP32)")
    worker.add_argument("--input-name", default="input", help="input tensor name (default 'input')")
    worker.add_argument(
        "--input",
        action="append",
        metavar="NAME:DATATYPE:DIMS[:mask]",
        help="one input of the model's signature, in the order the model takes them (repeat it); -1 marks the "
        "sequence, e.g. input_ids:INT64:-1; ':mask' marks the attention mask the worker builds (default: the model's own)",
    )
    worker.add_argument(
        "--max-length", type=int, default=0, metavar="TOKENS", help="the longest sequence served (default: the model's)"
    )
    worker.add_argument("--device", help="cpu or cuda[:N] (default: cuda:0 when available, else cpu)")
    worker.add_argument(
        "--listen", default="127.0.0.1:8000", metavar="HOST:PORT", help="HTTP API address (default 127.0.0.1:8000)"
    )
    worker.add_argument("--control-socket", type=Path, metavar="PATH", help="Unix socket for gputuned's control channel")
    worker.add_argument("--control-group", metavar="GROUP", help="also let this group use the control socket (mode 0660)")
    worker.add_argument("--max-queue", type=int, default=4096, help="most items queued before 503 (default 4096)")
    worker.add_argument(
        "--gpu-memory-fraction",
        type=float,
        default=1.0,
        metavar="SHARE",
        help="the most of the GPU's memory this worker may take, 0.01-1 (default 1); a batch over it fails as out of memory",
    )
    worker.add_argument("--knob", action="append", metavar="KNOB=VALUE", help="start with this knob value (repeatable)")
    worker.add_argument(
        "--saved-knob",
        action="append",
        metavar="KNOB=VALUE",
        help="a value gputuned saved: applied when this worker accepts it, else skipped with a warning",
    )
    worker.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the serving path's event loop: uvloop (faster, where installed), asyncio, or auto (uvloop when installed)",
    )
    worker.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")

    load = commands.add_parser(
        "load", help="generate inference load: a v2 endpoint, or an OpenAI-compatible LLM server (--api openai)"
    )
    load.add_argument(
        "url",
        nargs="*",
        default=["http://127.0.0.1:8000"],
        help="base URLs (default http://127.0.0.1:8000); several are loaded together, least outstanding requests first",
    )
    load.add_argument("--model", help="model name (default: the first in the repository index)")
    mode = load.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=int, default=8, help="closed loop: concurrent clients (default 8)")
    mode.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    load.add_argument("--requests", type=int, default=1000, help="stop after this many requests (default 1000)")
    load.add_argument("--duration", type=float, default=60.0, help="stop after this many seconds (default 60)")
    load.add_argument("--batch", type=int, default=1, help="items per request (default 1)")
    load.add_argument("--json", action="store_true", help="print the result as JSON")
    load.add_argument(
        "--lengths", metavar="N|LOW-HIGH|@FILE", help="v2: sequence lengths, for a model that takes sequences (token ids)"
    )
    load.add_argument(
        "--api", choices=("v2", "openai"), default="v2", help="v2 inference (default), or streamed OpenAI completions (vLLM)"
    )
    load.add_argument("--prompt-tokens", default="64", metavar="N|LOW-HIGH|@FILE", help="openai: prompt lengths (default 64)")
    load.add_argument("--output-tokens", default="128", metavar="N|LOW-HIGH|@FILE", help="openai: output lengths (default 128)")
    load.add_argument("--slo-ttft-ms", type=float, help="openai: the TTFT objective goodput counts against")
    load.add_argument("--slo-tpot-ms", type=float, help="openai: the TPOT objective goodput counts against")

    sweep = commands.add_parser("sweep", help="measure every point of a knob grid under a load (the offline baseline)")
    sweep.add_argument("grid", nargs="+", metavar="KNOB=V1,V2,...", help="e.g. max_batch_size=1,4,16 streams=1,2")
    sweep.add_argument("--url", default="http://127.0.0.1:8000", help="the worker's v2 endpoint")
    _add_admin_arguments(sweep, "a control socket: the daemon's admin.sock (default) or a worker's own")
    sweep.add_argument("--worker", metavar="NAME", help="with the daemon's admin.sock: which of its workers")
    sweep_load = sweep.add_mutually_exclusive_group()
    sweep_load.add_argument("--concurrency", type=int, default=64, help="closed-loop clients (default 64)")
    sweep_load.add_argument("--rate", type=float, help="open-loop arrivals per second")
    sweep.add_argument("--batch", type=int, default=1, help="items per request (default 1)")
    sweep.add_argument("--slo-ms", type=float, default=100.0, help="p99 latency SLO in ms (default 100)")
    sweep.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measurement")
    sweep.add_argument("--window", type=float, default=2.0, help="seconds per measured window")
    sweep.add_argument("--repeats", type=int, default=2, help="measured windows per setting (medians are reported)")
    sweep.add_argument("--csv", type=Path, default=Path("sweep.csv"))
    sweep.add_argument("--png", type=Path, default=Path("sweep.png"))

    dashboards = commands.add_parser("dashboards", help="generate the Grafana dashboards and provisioning files")
    dashboards_commands = dashboards.add_subparsers(dest="dashboards_command", required=True)
    dashboards_build = dashboards_commands.add_parser("build", help="write the dashboards and provisioning files")
    dashboards_build.add_argument("--out", type=Path, default=Path("dashboards"), help="output directory (default dashboards)")

    example = commands.add_parser(
        "triton-example", help="write a Triton model repository serving the built-in model (Python backend, TorchScript)"
    )
    example.add_argument("repository", type=Path, help="the directory to write (created; an existing model is replaced)")
    example.add_argument("--name", default="resnet-mini", help="the model's name (default resnet-mini)")
    example.add_argument("--max-batch-size", type=int, default=8, help="the config's max_batch_size (default 8)")

    plugin = commands.add_parser(
        "vllm-plugin", help="write the wheel of gputuned's vLLM plugin, to pip install into vLLM's environment"
    )
    plugin.add_argument("--out", type=Path, default=Path(), help="the directory to write it to (default: here)")

    # Internal: the daemon starts them for workers of kind triton and vllm. No help=, so the command list leaves them out.

    adapter = commands.add_parser("triton-adapter", description="A Triton model as a gputuned worker (the daemon starts this).")
    add_adapter_arguments(adapter)
    vllm_adapter = commands.add_parser("vllm-adapter", description="A vLLM server as a gputuned worker (the daemon starts this).")
    add_vllm_adapter_arguments(vllm_adapter)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # APScheduler logs every job run at INFO: once a second is noise, keep its warnings.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))


def _load_nvml(spec: str) -> ModuleType:
    """Imports the NVML binding named by nvml.module: 'module' or 'module:factory'."""
    module_name, _, factory = spec.partition(":")
    module = importlib.import_module(module_name)
    binding = getattr(module, factory)() if factory else module
    missing = [name for name in ("nvmlInit", "NVMLError") if not hasattr(binding, name)]
    if missing:
        raise AttributeError(f"{spec!r} is not an NVML binding: it has no {' or '.join(missing)}")
    return binding


def _run(args: argparse.Namespace, config: Config) -> int:
    # Imported here so `gputuned check-config` and --help stay fast.
    import psutil

    from gputuned.daemon.service import Daemon, daemon_environment, run_until_signalled
    from gputuned.samples import WorkerTarget

    try:
        nvml = _load_nvml(config.nvml.module)
    except (ImportError, AttributeError) as exc:
        print(f"gputuned: cannot load the NVML binding nvml.module={config.nvml.module!r}: {exc}", file=sys.stderr)
        return 2
    if args.worker_pid is not None and not args.no_worker:
        print("gputuned: --worker-pid watches a worker gputuned does not start; add --no-worker", file=sys.stderr)
        return 2
    watch = WorkerTarget(pid=args.worker_pid, gpu=args.worker_gpu)
    daemon = Daemon(
        config, nvml, psutil, supervise=not args.no_worker, watch=watch, environ=daemon_environment(), config_path=args.config
    )
    try:
        return run_until_signalled(daemon)
    except ConfigError as exc:
        print(f"gputuned: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gputuned: cannot start: {exc.strerror or exc} ({exc.filename or config.metrics.listen})", file=sys.stderr)
        return 1


def _worker(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level)
    try:
        from gputuned.worker.main import run_from_arguments
    except ImportError as exc:
        print(f"gputuned worker needs the [worker] extra (torch, numpy): {exc}", file=sys.stderr)
        return 2
    return run_from_arguments(args)


def _triton_adapter(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level)
    from gputuned.triton.adapter import run_from_arguments

    return run_from_arguments(args)


def _vllm_adapter(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level)
    from gputuned.vllm.adapter import run_from_arguments

    return run_from_arguments(args)


def _vllm_plugin(args: argparse.Namespace) -> int:
    from gputuned.vllm.wheel import build

    try:
        path = build(args.out)
    except OSError as exc:
        print(f"gputuned vllm-plugin: {exc}", file=sys.stderr)
        return 2
    print(path)
    print(f"install it into vLLM's environment: /path/to/vllm-env/bin/python -m pip install {path}", file=sys.stderr)
    return 0


def _triton_example(args: argparse.Namespace) -> int:
    try:
        from gputuned.triton.example import write_example
    except ImportError as exc:
        print(f"gputuned triton-example needs the [worker] extra (torch, numpy): {exc}", file=sys.stderr)
        return 2
    try:
        path = write_example(args.repository, args.name, args.max_batch_size)
    except (OSError, ValueError) as exc:
        print(f"gputuned triton-example: {exc}", file=sys.stderr)
        return 2
    print(f"wrote model {args.name!r} to {path}")
    return 0


def _admin_socket(args: argparse.Namespace, config: Config) -> Path:
    return args.socket or Path(config.paths.runtime_dir) / "admin.sock"


def _set(args: argparse.Namespace, config: Config) -> int:
    from gputuned.control.client import SLOW_SET_SECONDS, ControlClient, ControlError
    from gputuned.knobs import KnobError, parse_assignments

    try:
        changes = parse_assignments(args.assignments)
        with ControlClient(_admin_socket(args, config)) as client:
            applied = client.set(changes, args.worker, timeout=SLOW_SET_SECONDS)
    except (KnobError, ControlError) as exc:
        print(f"gputuned set: refused: {exc}", file=sys.stderr)
        return 1
    print("applied: " + ", ".join(f"{name}={value}" for name, value in applied.items()))
    return 0


def _status(args: argparse.Namespace, config: Config) -> int:
    import json
    import time

    from gputuned.control.client import ControlClient, ControlError
    from gputuned.daemon.status import format_status

    if args.watch is not None and args.watch <= 0:
        print("gputuned status: --watch takes a positive number of seconds", file=sys.stderr)
        return 2
    while True:
        try:
            with ControlClient(_admin_socket(args, config)) as client:
                report = client.request("status")["status"]
            shown, code = json.dumps(report, indent=2) if args.json else format_status(report), 0
        except ControlError as exc:
            shown, code = f"gputuned status: {exc} (is `gputuned run` running?)", 1
        if args.watch is None:
            print(shown, file=sys.stderr if code else sys.stdout)
            return code
        print(f"\x1b[H\x1b[2J{time.strftime('%H:%M:%S')}, every {args.watch:g} s (Ctrl-C to stop)\n{shown}", flush=True)
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


def _install(args: argparse.Namespace) -> int:
    from gputuned.install import InstallError, install, this_gputuned, uninstall

    try:
        if args.command == "uninstall":
            lines = uninstall(args.root, args.purge)
        else:
            lines = install(args.root, args.executable or this_gputuned(), args.grafana)
    except InstallError as exc:
        print(f"gputuned install: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gputuned {args.command}: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _dashboards(args: argparse.Namespace) -> int:
    try:
        from gputuned.dashboards.build import generated_files, write_files
    except ImportError as exc:
        print(f"gputuned dashboards: {exc}; install the SDK with: pip install 'gputuned[dashboards]'", file=sys.stderr)
        return 1

    try:
        written = write_files(generated_files(), args.out)
    except OSError as exc:
        print(f"gputuned dashboards: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 1
    print("\n".join(f"wrote {path}" for path in written))
    return 0


def _worker_request(args: argparse.Namespace, config: Config, kind: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    """Sends a request about one worker (`args.worker`) to the daemon; its entry of the status
    report the daemon answers with, or None once the error is printed."""
    from gputuned.control.client import ControlClient, ControlError
    from gputuned.daemon.status import worker_entry

    if args.worker:
        fields = {**fields, "worker": args.worker}
    try:
        with ControlClient(_admin_socket(args, config)) as client:
            report = client.request(kind, **fields)["status"]
        return worker_entry(report, args.worker)
    except ControlError as exc:
        print(f"gputuned {kind}: {exc}", file=sys.stderr)
    except KeyError as exc:
        print(f"gputuned {kind}: {exc.args[0]}", file=sys.stderr)
    return None


def _tune(args: argparse.Namespace, config: Config) -> int:
    fields: dict[str, Any] = {"resume": args.resume}
    if args.mode:
        fields["mode"] = args.mode
    entry = _worker_request(args, config, "tune", fields)
    if entry is None:
        return 1
    tuner = entry["tuner"]
    frozen = ", ".join(tuner["frozen_knobs"]) or "none"
    print(f"{entry['name']}: tuner {tuner['mode']} ({tuner['phase']}); knobs frozen by hand: {frozen}")
    return 0


def _restart(args: argparse.Namespace, config: Config) -> int:
    entry = _worker_request(args, config, "restart", {})
    if entry is None:
        return 1
    print(f"{entry['name']}: {entry['message']}")
    return 0


def _sweep(args: argparse.Namespace, config: Config) -> int:
    from gputuned.sweep import main as sweep_main

    if args.window <= 0 or args.repeats < 1 or args.warmup < 0:
        print("gputuned sweep: --window and --repeats must be positive, --warmup not negative", file=sys.stderr)
        return 2
    args.socket = _admin_socket(args, config)
    return sweep_main(args)


def _load(args: argparse.Namespace) -> int:
    from gputuned.lengths import parse_lengths
    from gputuned.loadgen import LoadPlan
    from gputuned.loadgen import main as load_main

    if (
        args.requests < 1
        or args.duration <= 0
        or args.batch < 1
        or (args.rate is not None and args.rate <= 0)
        or args.concurrency < 1
    ):
        print("gputuned load: --requests, --duration, --batch, --concurrency and --rate must be positive", file=sys.stderr)
        return 2
    common = {
        "url": args.url[0].rstrip("/"),
        "more_urls": tuple(url.rstrip("/") for url in args.url[1:]),
        "model": args.model,
        "concurrency": None if args.rate else args.concurrency,
        "rate": args.rate,
        "requests": args.requests,
        "duration": args.duration,
    }
    if args.api == "openai":
        return _completion_load(args, common)
    try:
        lengths = None if args.lengths is None else parse_lengths(args.lengths)
    except ValueError as exc:
        print(f"gputuned load: --lengths {exc}", file=sys.stderr)
        return 2
    return load_main(LoadPlan(**common, batch=args.batch, lengths=lengths), args.json)


def _completion_load(args: argparse.Namespace, common: dict[str, Any]) -> int:
    from gputuned.lengths import parse_lengths
    from gputuned.llmload import CompletionPlan
    from gputuned.llmload import main as completion_main

    if (args.slo_ttft_ms is None) != (args.slo_tpot_ms is None):
        print("gputuned load: goodput needs both --slo-ttft-ms and --slo-tpot-ms", file=sys.stderr)
        return 2
    try:
        prompt, output = parse_lengths(args.prompt_tokens), parse_lengths(args.output_tokens)
    except ValueError as exc:
        print(f"gputuned load: {exc}", file=sys.stderr)
        return 2
    plan = CompletionPlan(
        **common,
        prompt_tokens=prompt,
        output_tokens=output,
        slo_ttft=None if args.slo_ttft_ms is None else args.slo_ttft_ms / 1000,
        slo_tpot=None if args.slo_tpot_ms is None else args.slo_tpot_ms / 1000,
    )
    return completion_main(plan, args.json)


def _configured(args: argparse.Namespace) -> Config:
    """The config file (or the defaults) with the command line's overrides; raises ConfigError."""
    config = load_config(args.config)
    overrides: dict[str, Any] = {}
    if getattr(args, "metrics_listen", None):
        overrides["metrics"] = {"listen": args.metrics_listen}
    if getattr(args, "log_level", None):
        overrides["log"] = {"level": args.log_level}
    if getattr(args, "nvml_module", None):
        overrides["nvml"] = {"module": args.nvml_module}
    paths = {key: str(getattr(args, key)) for key in ("runtime_dir", "state_dir") if getattr(args, key, None)}
    if paths:
        overrides["paths"] = paths
    return with_overrides(config, **overrides)


def _check_config(args: argparse.Namespace) -> int:
    path = args.config or DEFAULT_CONFIG_PATH
    if not path.exists():
        print(f"gputuned check-config: no config file at {path} (give one with --config FILE)", file=sys.stderr)
        return 2
    try:
        config = _configured(args)
    except ConfigError as exc:
        print(f"gputuned: invalid configuration: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: configuration is valid")
    if config.first_worker is None:
        print(
            "note: it names no worker, so gputuned monitors only and changes nothing. A config written for "
            "gputuned 0.1, which ran the built-in demo worker when [worker] was left out, needs a [worker] table "
            "now to keep doing so (docs/upgrading.md)."
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    standalone = {
        "worker": _worker,
        "triton-adapter": _triton_adapter,
        "triton-example": _triton_example,
        "vllm-adapter": _vllm_adapter,
        "vllm-plugin": _vllm_plugin,
        "load": _load,
        "install": _install,
        "uninstall": _install,
        "dashboards": _dashboards,
        "check-config": _check_config,
    }
    if args.command in standalone:
        return standalone[args.command](args)
    try:
        config = _configured(args)
    except ConfigError as exc:
        print(f"gputuned: invalid configuration: {exc}", file=sys.stderr)
        return 2
    clients = {"set": _set, "status": _status, "tune": _tune, "restart": _restart, "sweep": _sweep}
    if args.command in clients:
        return clients[args.command](args, config)
    _configure_logging(config.log.level)
    return _run(args, config)
