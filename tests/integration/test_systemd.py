"""The systemd side: what the unit declares, and sd_notify on a real socket (installing it: test_install.py)."""

from __future__ import annotations

import itertools
import signal
import socket
import time
import urllib.request

import pytest

from gputuned.testing.processes import REPO_ROOT, free_port, running_daemon, running_supervising_daemon

pytestmark = pytest.mark.integration


def test_the_unit_declares_what_the_service_needs():
    unit = (REPO_ROOT / "systemd/gputuned.service").read_text()
    for directive in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "RuntimeDirectory=gputuned",
        "StateDirectory=gputuned",
        "ConfigurationDirectory=gputuned",
        "User=gputuned",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "DeviceAllow=char-nvidia-frontend rw",
        "ExecReload=",
    ):
        assert directive in unit, directive
    assert "# - MemoryDenyWriteExecute=yes breaks PyTorch" in unit


class NotifySocket:
    """A datagram socket like systemd's NOTIFY_SOCKET; records every datagram with its arrival time."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                continue

    def times_of(self, assignment: str) -> list[float]:
        return [t for t, text in self.messages if assignment in text.split("\n")]


@pytest.mark.parametrize("abstract", [False, True])
def test_ready_watchdog_and_stopping_on_a_real_notify_socket(tmp_path, abstract):
    address = f"@gputuned-test-{time.monotonic_ns()}" if abstract else str(tmp_path / "notify.sock")
    notify = NotifySocket(address)
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"}  # ping every 1 s
    with running_daemon("--nvml-module", "gputuned.testing.fake_nvml:hgx8", env=env) as (process, _):
        notify.collect(4.5)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        notify.collect(0.5)
    ready = notify.times_of("READY=1")
    watchdog = notify.times_of("WATCHDOG=1")
    stopping = notify.times_of("STOPPING=1")
    assert len(ready) == 1 and len(stopping) == 1
    assert ready[0] <= watchdog[0] and watchdog[-1] <= stopping[0]
    gaps = [b - a for a, b in itertools.pairwise(watchdog)]
    assert len(watchdog) >= 3 and all(0.6 < gap < 1.6 for gap in gaps), gaps
    assert any(text.startswith("STATUS=") or "\nSTATUS=" in text for _, text in notify.messages)


def test_ready_is_sent_only_once_the_worker_is_ready(tmp_path):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    with running_supervising_daemon(tmp_path, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}, wait_ready=False) as (
        _process,
        _metrics,
        worker,
        _admin,
    ):
        deadline = time.monotonic() + 60
        while not notify.times_of("READY=1") and time.monotonic() < deadline:
            notify.collect(0.2)
        assert notify.times_of("READY=1")
        with urllib.request.urlopen(f"{worker}/v2/health/ready", timeout=5) as response:  # loopback
            assert response.status == 200
    status = next(text for _, text in notify.messages if "READY=1" in text)
    assert "STATUS=worker ready" in status and "max_batch_size=1" in status


def test_free_port_helper_gives_a_bindable_loopback_port():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
