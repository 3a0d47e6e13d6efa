"""Starting the real daemon and a real Prometheus server on loopback for integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).parent.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
        return response.read().decode()


def wait_for_http(url: str, process: subprocess.Popen, deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            http_get(url, timeout=1.0)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {deadline_s} s")


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> float:
    """Sends `sig`, waits for exit, returns the seconds it took (kills after `timeout`)."""
    started = time.monotonic()
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    return time.monotonic() - started


@contextlib.contextmanager
def running_daemon(
    *args: str, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`gputuned run --no-worker` on a free loopback port; yields (process, metrics URL). Its
    log goes to `log` if given (else to a pipe the caller may read)."""
    port = free_port()
    runtime_dir = tempfile.mkdtemp(prefix="gputuned-run-")
    command = [
        sys.executable,
        "-m",
        "gputuned",
        "run",
        "--no-worker",
        "--metrics-listen",
        f"127.0.0.1:{port}",
        "--runtime-dir",
        runtime_dir,
        "--state-dir",
        runtime_dir,
        *args,
    ]
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    log_file = log.open("w") if log is not None else None
    process = subprocess.Popen(command, env=full_env, stderr=log_file or subprocess.PIPE, text=True, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for_http(url, process)
        yield process, url
    finally:
        if process.poll() is None:
            stop(process)
        if process.stderr is not None:
            process.stderr.close()
        if log_file is not None:
            log_file.close()
        shutil.rmtree(runtime_dir, ignore_errors=True)


@contextlib.contextmanager
def serving(
    command: list[str],
    log_path: Path,
    ready_url: str,
    stop_timeout: float = 10.0,
    ready_timeout: float = 60.0,
    **popen: Any,
) -> Iterator[subprocess.Popen]:
    """`command` running with its output appended to `log_path`: yields it once `ready_url`
    answers (within `ready_timeout`), and stops it (SIGTERM, then SIGKILL after `stop_timeout`)
    on the way out."""
    log = log_path.open("a")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **popen)
    try:
        wait_for_http(ready_url, process, deadline_s=ready_timeout)
        yield process
    finally:
        if process.poll() is None:
            stop(process, timeout=stop_timeout)
        log.close()


@contextlib.contextmanager
def running_prometheus(targets: list[str], workdir: Path, rule_files: Sequence[Path] = ()) -> Iterator[str]:
    """A real Prometheus server (Debian's package) on loopback scraping `targets` every second,
    evaluating `rule_files` every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed (Debian package 'prometheus'); scripts/setup.sh installs it")
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: {json.dumps([str(path) for path in rule_files])}\n"
        "scrape_configs:\n  - job_name: gputuned\n    static_configs:\n"
        f"      - targets: {json.dumps(targets)}\n"
    )
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    base = f"http://127.0.0.1:{port}"
    with serving(command, workdir / "prometheus.log", f"{base}/-/ready"):
        yield base


def prometheus_query(base: str, promql: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        body = json.loads(http_get(url))
    except urllib.error.HTTPError as exc:  # Prometheus answers a bad query with 400 and says why
        body = json.loads(exc.read() or b"{}")
    if body.get("status") != "success":
        raise RuntimeError(f"query {promql!r} failed: {body}")
    return body["data"]["result"]


@contextlib.contextmanager
def running_worker(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, root: Path = REPO_ROOT
) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """A real `gputuned worker` on a free loopback port; yields (process, base URL, control socket).
    `root` is the checkout it runs from (another commit's worktree, for a side-by-side bench)."""
    port = free_port()
    control = tmp_path / "ctl" / "worker.sock"
    command = [
        sys.executable,
        "-m",
        "gputuned",
        "worker",
        "--listen",
        f"127.0.0.1:{port}",
        "--control-socket",
        str(control),
        *args,
    ]
    base = f"http://127.0.0.1:{port}"
    environment = {**os.environ, "PYTHONPATH": str(root), **(env or {})}
    with serving(command, tmp_path / "worker.log", f"{base}/v2/health/ready", cwd=root, env=environment) as process:
        yield process, base, control


def wait_for_supervised_ready(admin: Path, process: subprocess.Popen, deadline_s: float = 60.0) -> None:
    """Until the daemon reports every worker ready (connected to its control socket)."""
    from gputuned.control.client import ControlError

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the daemon exited with {process.returncode}")
        try:
            workers = admin_status(admin)["workers"]
            if workers and all(entry["state"] == "ready" for entry in workers):
                return
        except ControlError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the workers were not ready within {deadline_s} s")


def write_daemon_config(
    tmp_path: Path, worker_port: int, tuning: dict | None = None, workers: list[dict] | None = None, **worker: object
) -> Path:
    """A config for a daemon supervising a worker (`[worker]` with `worker_port` and the `worker`
    keys) or several (`workers`, one `[[workers]]` table each) inside `tmp_path`, with fast timeouts."""
    fast = {"ping_interval_seconds": 0.5, "ping_timeout_seconds": 3.0, "restart_backoff_seconds": 0.1}

    def toml(value: object) -> str:
        return json.dumps(value) if not isinstance(value, bool) else str(value).lower()

    def table(header: str, settings: dict) -> list[str]:
        return ["", header, *(f"{key} = {toml(value)}" for key, value in settings.items())]

    lines = ["[paths]", f'runtime_dir = "{tmp_path / "run"}"', f'state_dir = "{tmp_path / "state"}"']
    if workers is None:
        lines += table("[worker]", {"listen": f"127.0.0.1:{worker_port}", **fast, **worker})
    else:
        for definition in workers:
            lines += table("[[workers]]", {**fast, **definition})
    lines += table("[tuning]", tuning or {})
    path = tmp_path / "gputuned.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def running_supervising_daemon(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    worker_port: int | None = None,
    tuning: dict | None = None,
    workers: list[dict] | None = None,
    **worker: object,
) -> Iterator[tuple[subprocess.Popen, str, str, Path]]:
    """`gputuned run` supervising a worker (or `workers`, see write_daemon_config); yields (process,
    metrics URL, worker base URL, admin socket).

    The same `tmp_path` and `worker_port` give a second daemon the first one's config and state."""
    worker_port = worker_port or free_port()
    config = write_daemon_config(tmp_path, worker_port, tuning, workers, **worker)
    metrics_port = free_port()
    log = (tmp_path / "daemon.log").open("w")
    command = [
        sys.executable,
        "-m",
        "gputuned",
        "run",
        "--config",
        str(config),
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        *args,
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    worker_base = f"http://127.0.0.1:{worker_port}"
    try:
        wait_for_http(f"http://127.0.0.1:{metrics_port}/metrics", process, deadline_s=30)
        admin = tmp_path / "run" / "admin.sock"
        # The metrics endpoint can answer before the admin socket is bound: a test asking
        # for the status at once would find no socket.
        wait_for(lambda: admin.exists() or process.poll() is not None, 30, "the daemon's admin socket")
        if wait_ready:
            if workers is None:
                wait_for_http(f"{worker_base}/v2/health/ready", process, deadline_s=60)
            wait_for_supervised_ready(admin, process)
        yield process, f"http://127.0.0.1:{metrics_port}/metrics", worker_base, admin
    finally:
        if process.poll() is None:
            stop(process, timeout=60)
        log.close()


def admin_status(admin: Path, timeout: float = 5.0) -> dict:
    """A daemon's status report, asked over its admin socket."""
    from gputuned.control.client import ControlClient

    with ControlClient(admin, timeout=timeout) as client:
        return client.request("status")["status"]


def wait_for(predicate: Callable[[], object], seconds: float, what: str) -> Any:
    """Polls `predicate` every 0.1 s until it returns something true, and returns that."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def worker_status(admin: Path, name: str | None = None) -> dict:
    """One worker of a daemon's status report: the one named, or the only one."""
    from gputuned.daemon.status import worker_entry

    return worker_entry(admin_status(admin), name)


def freeze_tuner(admin: Path, name: str | None = None, seconds: float = 60.0) -> dict:
    """Sets a worker's tuner to frozen and returns its status once a change on trial (reverted
    at the tuner's next step, a Triton reload on a Triton worker) is no longer in force."""
    from gputuned.control.client import ControlClient

    with ControlClient(admin) as client:
        which: dict[str, Any] = {"worker": name} if name else {}
        client.request("tune", mode="frozen", **which)
    return wait_for(
        lambda: not (entry := worker_status(admin, name))["tuner"]["trial_active"] and entry,
        seconds,
        "the change on trial to be reverted",
    )


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """`gputuned ARGS...` in a process of its own, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "gputuned", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )
