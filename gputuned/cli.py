"""The `gputuned` command. Thin: parses arguments, builds the config, calls in."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from types import ModuleType

from gputuned import __version__
from gputuned.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config, with_overrides


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gputuned", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gputuned {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon in the foreground: sample, export /metrics")
    run.add_argument("--config", type=Path, help=f"TOML config file (default {DEFAULT_CONFIG_PATH} if it exists)")
    run.add_argument("--metrics-listen", metavar="HOST:PORT", help="where to serve /metrics (overrides metrics.listen)")
    run.add_argument("--no-worker", action="store_true", help="monitor only; do not start a managed worker")
    run.add_argument("--worker-pid", type=int, metavar="PID", help="watch this process as the worker (one gputuned does not start)")
    run.add_argument("--worker-gpu", type=int, metavar="INDEX", help="NVML index of the GPU the watched worker uses")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="overrides log.level")
    run.add_argument("--nvml-module", metavar="MODULE[:FACTORY]", help="NVML binding (overrides nvml.module)")

    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", type=Path, help=f"TOML config file (default {DEFAULT_CONFIG_PATH} if it exists)")
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
    return getattr(module, factory)() if factory else module


def _run(args: argparse.Namespace, config: Config) -> int:
    if not args.no_worker:
        print(
            "gputuned: the managed worker is not available in this version; run with --no-worker to monitor only",
            file=sys.stderr,
        )
        return 2
    # Imported here so `gputuned check-config` and --help stay fast.
    import psutil

    from gputuned.daemon.service import MonitoringDaemon, run_until_signalled
    from gputuned.samples import WorkerTarget

    try:
        nvml = _load_nvml(config.nvml.module)
    except (ImportError, AttributeError) as exc:
        print(f"gputuned: cannot load the NVML binding nvml.module={config.nvml.module!r}: {exc}", file=sys.stderr)
        return 2
    target = WorkerTarget(pid=args.worker_pid, gpu=args.worker_gpu)
    daemon = MonitoringDaemon(config, nvml=nvml, psutil=psutil, target=target)
    try:
        return run_until_signalled(daemon)
    except OSError as exc:
        print(f"gputuned: cannot serve metrics on {config.metrics.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        overrides = {}
        if getattr(args, "metrics_listen", None):
            overrides["metrics"] = {"listen": args.metrics_listen}
        if getattr(args, "log_level", None):
            overrides["log"] = {"level": args.log_level}
        if getattr(args, "nvml_module", None):
            overrides["nvml"] = {"module": args.nvml_module}
        config = with_overrides(config, **overrides)
    except ConfigError as exc:
        print(f"gputuned: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print("configuration is valid")
        return 0
    _configure_logging(config.log.level)
    return _run(args, config)
