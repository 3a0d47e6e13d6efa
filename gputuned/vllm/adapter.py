"""`gputuned vllm-adapter`: a vLLM server as a gputuned worker, in a process of its own.

Supervised (`--python`, vLLM's interpreter): the adapter starts vLLM's OpenAI-compatible
server with the plugin's socket in its environment and lives as long as it. Attached (no
`--python`): it reads the vLLM at `--url` and moves its knobs through the plugin socket the
operator started it with (`--plugin-socket`), or monitors it untuned without one. How an
adapter lives is `adapting.lifecycle`.
"""

from __future__ import annotations

import argparse
import grp
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from gputuned.adapting.lifecycle import AdapterRun, OwnedServer, run
from gputuned.adapting.process import device_indices
from gputuned.config import parse_listen_address
from gputuned.knobs import KnobError, parse_assignments
from gputuned.vllm.api import VllmClient
from gputuned.vllm.handler import VllmWorker
from gputuned.vllm.server import VllmSpec, server_command, server_env


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the model vLLM serves: a directory or a Hugging Face name")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="vLLM's HTTP endpoint (default http://127.0.0.1:8000)")
    parser.add_argument("--control-socket", type=Path, required=True, metavar="PATH", help="gputuned's control socket")
    parser.add_argument("--control-group", metavar="GROUP", help="also let this group use the control socket (mode 0660)")
    parser.add_argument("--device", default="auto", help="cpu, cuda[:N] or auto: where the started vLLM runs")
    parser.add_argument("--python", metavar="PYTHON", help="start vLLM with this interpreter (supervised); omit to attach")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG", help="one more argument for vLLM")
    parser.add_argument("--plugin-socket", type=Path, metavar="PATH", help="the socket gputuned's plugin serves in vLLM")
    parser.add_argument("--cache-dir", type=Path, help="where the started vLLM may write its caches")
    parser.add_argument("--saved-knob", action="append", metavar="KNOB=VALUE", help="accepted knobs to re-apply")
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds for vLLM to become ready")
    parser.add_argument("--hang-timeout", type=float, default=10.0, help="seconds vLLM may not answer before a restart")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="seconds vLLM may take to stop")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")


def run_from_arguments(args: argparse.Namespace) -> int:
    try:
        saved = parse_assignments(args.saved_knob or [])
        group = grp.getgrnam(args.control_group).gr_gid if args.control_group else None
        if args.python and args.plugin_socket is None:
            raise ValueError("--python needs --plugin-socket (where the started vLLM's plugin listens)")
    except (ValueError, KnobError, KeyError) as exc:
        print(f"gputuned vllm-adapter: {exc}", file=sys.stderr)
        return 2
    client = VllmClient(args.url)
    server = None
    if args.python:
        parts = urlsplit(args.url)
        host, port = parse_listen_address(f"{parts.hostname}:{parts.port}")
        spec = VllmSpec(args.python, args.model, host, port, tuple(args.server_arg))
        server = OwnedServer(
            "vLLM",
            server_command(spec),
            server_env(os.environ, args.plugin_socket, args.cache_dir),
            device_indices(args.device),
            host,
            (port,),
            args.drain_timeout,
        )

    def attach() -> VllmWorker:
        worker = VllmWorker(client, args.plugin_socket, args.model, args.device)
        worker.attach(saved)
        return worker

    adapter = AdapterRun(args.control_socket, group, client.ready, f"vLLM at {args.url}", args.ready_timeout, args.hang_timeout)
    return run(adapter, server, attach, client.ready)
