"""`gputuned triton-adapter`: a Triton model as a gputuned worker, in a process of its own.

How it lives (supervised: it starts `tritonserver` and lives as long as it; attached: it
tunes a Triton someone else runs, and outlives it) is `adapting.lifecycle`; this module
turns the command line into that run.
"""

from __future__ import annotations

import argparse
import grp
import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from gputuned.adapting.lifecycle import AdapterRun, OwnedServer, run
from gputuned.adapting.process import device_indices
from gputuned.config import parse_listen_address
from gputuned.knobs import KnobError, parse_assignments
from gputuned.triton.api import TritonClient
from gputuned.triton.handler import TritonWorker
from gputuned.triton.repository import ConfigFile, WriteBackError
from gputuned.triton.server import ServerSpec, server_command

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the Triton model to tune")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="Triton's HTTP endpoint (default http://127.0.0.1:8000)")
    parser.add_argument("--metrics-url", help="Triton's metrics endpoint (default: the --url host, its port + 2, /metrics)")
    parser.add_argument("--control-socket", type=Path, required=True, metavar="PATH", help="gputuned's control socket")
    parser.add_argument("--control-group", metavar="GROUP", help="also let this group use the control socket (mode 0660)")
    parser.add_argument("--device", default="auto", help="cpu, cuda[:N] or auto: where the model's instances run")
    parser.add_argument("--server", metavar="BINARY", help="start and own this tritonserver (supervised); omit to attach")
    parser.add_argument("--repository", type=Path, help="the model repository (the started server's; write-back's)")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG", help="one more tritonserver argument")
    parser.add_argument(
        "--write-back", action="store_true", help="write accepted knobs into the model's config.pbtxt under --repository"
    )
    parser.add_argument("--access-token-file", type=Path, help="a file holding the repository API's access token")
    parser.add_argument("--saved-knob", action="append", metavar="KNOB=VALUE", help="accepted knobs to re-apply")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds for the model to become ready")
    parser.add_argument("--hang-timeout", type=float, default=10.0, help="seconds Triton may not answer before a restart")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="seconds Triton may take to drain on stop")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")


def default_metrics_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.port is None:
        raise ValueError(f"--url {url!r} names no port; give --metrics-url")
    host = parts.hostname or "127.0.0.1"
    netloc = f"[{host}]:{parts.port + 2}" if ":" in host else f"{host}:{parts.port + 2}"
    return urlunsplit((parts.scheme, netloc, "/metrics", "", ""))


def run_from_arguments(args: argparse.Namespace) -> int:
    try:
        saved = parse_assignments(args.saved_knob or [])
        metrics_url = args.metrics_url or default_metrics_url(args.url)
        token = args.access_token_file.read_text().strip() if args.access_token_file else ""
        group = grp.getgrnam(args.control_group).gr_gid if args.control_group else None
        if (args.server or args.write_back) and args.repository is None:
            raise ValueError(f"{'--server' if args.server else '--write-back'} needs --repository")
        write_back = ConfigFile(args.repository, args.model) if args.write_back else None
    except (ValueError, KnobError, KeyError, OSError, WriteBackError) as exc:
        print(f"gputuned triton-adapter: {exc}", file=sys.stderr)
        return 2
    client = TritonClient(args.url, metrics_url, access_token=token)
    server = None
    if args.server:
        spec = _server_spec(args, metrics_url)
        server = OwnedServer(
            "tritonserver",
            server_command(spec),
            dict(os.environ),
            device_indices(args.device),
            spec.host,
            (spec.http_port, spec.metrics_port),
            args.drain_timeout,
        )

    def attach() -> TritonWorker:
        if server is None:
            client.check_model_control()  # an operator's Triton: say now, not at the first set, if it cannot be tuned
        worker = TritonWorker(client, args.model, args.device, write_back=write_back)
        worker.attach(saved)
        return worker

    adapter = AdapterRun(
        args.control_socket,
        group,
        lambda: client.model_ready(args.model),
        f"model {args.model} at {args.url}",
        args.ready_timeout,
        args.hang_timeout,
    )
    return run(adapter, server, attach, client.ready)


def _server_spec(args: argparse.Namespace, metrics_url: str) -> ServerSpec:
    parts = urlsplit(args.url)
    host, port = parse_listen_address(f"{parts.hostname}:{parts.port}")
    metrics = urlsplit(metrics_url)
    return ServerSpec(
        binary=args.server,
        repository=args.repository,
        model=args.model,
        host=host,
        http_port=port,
        metrics_port=metrics.port or port + 2,
        extra_args=tuple(args.server_arg),
    )
