"""`gputuned triton-adapter`: a Triton model as a gputuned worker, in a process of its own.

The daemon starts and supervises this process as it does the built-in worker (placement,
restarts with backoff, hang detection, drain, adoption after a daemon restart), so the
Triton worker kind needs nothing new in the daemon. In supervised mode (`--server`) the
adapter starts `tritonserver` as its child and lives exactly as long as it: when Triton
exits or stops answering for `--hang-timeout` seconds, the adapter stops it and exits 1,
and the daemon starts both again with the accepted knobs; SIGTERM drains Triton (it
finishes the requests in flight) before the adapter exits. In attach mode (no `--server`)
it tunes a Triton that someone else runs and outlives it: while Triton is away the stats
stand still, and when it answers again the accepted knobs are re-applied.
"""

from __future__ import annotations

import argparse
import grp
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from gputuned.config import parse_listen_address
from gputuned.control.server import ControlServer, ServerThread
from gputuned.knobs import KnobError, parse_assignments
from gputuned.triton.api import TritonClient, TritonError
from gputuned.triton.handler import POLL_SECONDS, TritonWorker
from gputuned.triton.repository import ConfigFile, WriteBackError
from gputuned.triton.server import (
    ServerSpec,
    check_ports_free,
    kill_descendants,
    reap_orphans,
    start_server,
    stop_server,
)

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


def device_indices(device: str) -> list[int] | None:
    """The GPUs a started server may see: cuda:N -> [N]; cpu -> none; auto -> as the adapter sees."""
    if device == "cpu":
        return []
    if device.startswith("cuda:") and device[5:].isdigit():
        return [int(device[5:])]
    return None


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
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    process = None
    if args.server:
        spec = _server_spec(args, metrics_url)
        try:
            check_ports_free(spec.host, (spec.http_port, spec.metrics_port))
        except OSError as exc:
            log.error("cannot start tritonserver: %s", exc.strerror)
            return 1
        reap_orphans()
        process = start_server(spec, os.environ, device_indices(args.device))
        log.info("started tritonserver pid %d on %s", process.pid, args.url)
    try:
        if not _wait_ready(client, args.model, process, args.ready_timeout, stop):
            return 1 if not stop.is_set() else 0
        if process is None:
            client.check_model_control()  # an operator's Triton: say now, not at the first set, if it cannot be tuned
        worker = TritonWorker(client, args.model, args.device, write_back=write_back)
        worker.attach(saved)
        control = ServerThread(
            ControlServer(args.control_socket, worker, group=group, stats_interval=POLL_SECONDS), "gputuned-triton-control"
        )
        control.start()
        log.info("control socket listening on %s; tuning model %s at %s", args.control_socket, args.model, args.url)
        watch = threading.Thread(target=_poll, args=(worker, client, process, args.hang_timeout, stop), daemon=True)
        watch.start()
        code = _serve(process, stop)
        control.stop()
        return code
    except TritonError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:  # the control socket could not be bound
        log.error("cannot serve the control socket %s: %s", args.control_socket, exc)
        return 1
    finally:
        if process is not None:
            stop_server(process, args.drain_timeout)
            if left := kill_descendants():
                log.warning("killed %d process(es) the server left behind (Python backend stubs)", left)


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


def _wait_ready(
    client: TritonClient, model: str, process: subprocess.Popen[bytes] | None, timeout: float, stop: threading.Event
) -> bool:
    deadline = time.monotonic() + timeout
    while not client.model_ready(model):
        if process is not None and process.poll() is not None:
            log.error("tritonserver exited with code %s before model %s was ready", process.returncode, model)
            return False
        if time.monotonic() > deadline:
            log.error("model %s was not ready at %s within %.0f s", model, client.url, timeout)
            return False
        if stop.wait(0.2):
            return False
    return True


def _poll(
    worker: TritonWorker,
    client: TritonClient,
    process: subprocess.Popen[bytes] | None,
    hang_timeout: float,
    stop: threading.Event,
) -> None:
    """Reads Triton every POLL_SECONDS; a started server that stays silent or not ready
    (/v2/health/ready) for `hang_timeout` is killed (the main thread then sees it exit)."""
    last_answer = time.monotonic()
    while not stop.wait(POLL_SECONDS):
        if worker.poll() and client.ready():
            last_answer = time.monotonic()
        elif process is not None and time.monotonic() - last_answer > hang_timeout and process.poll() is None:
            log.error("tritonserver was not ready or did not answer for %.0f s; killing it", hang_timeout)
            process.kill()


def _serve(process: subprocess.Popen[bytes] | None, stop: threading.Event) -> int:
    """Until SIGTERM (0) or the started server's exit (1)."""
    while not stop.wait(0.2):
        if process is not None and process.poll() is not None:
            log.error("tritonserver exited with code %s", process.returncode)
            stop.set()
            return 1
    return 0
