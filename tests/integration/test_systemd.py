"""The systemd side: the installed unit verifies and stays hardened; sd_notify on a real socket."""

from __future__ import annotations

import itertools
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gputuned.testing.processes import REPO_ROOT, free_port, running_daemon, running_supervising_daemon

pytestmark = pytest.mark.integration


def install(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gputuned", "install", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )


def test_install_puts_the_unit_and_config_in_place_and_keeps_an_existing_config(tmp_path):
    first = install(tmp_path)
    assert first.returncode == 0, first.stderr
    unit = tmp_path / "etc/systemd/system/gputuned.service"
    config = tmp_path / "etc/gputuned/gputuned.toml"
    assert f"ExecStart={sys.executable} -m gputuned run" in unit.read_text() or "bin/gputuned run" in unit.read_text()
    assert config.read_text() == (REPO_ROOT / "systemd/gputuned.toml").read_text()
    assert "systemctl enable --now gputuned" in first.stdout
    config.write_text('[log]\nlevel = "debug"\n')
    second = install(tmp_path)
    assert f"kept the existing {config}" in second.stdout
    assert config.read_text() == '[log]\nlevel = "debug"\n'


def test_install_puts_the_dashboards_where_grafana_provisioning_reads_them(tmp_path):
    assert install(tmp_path).returncode == 0
    dashboards = REPO_ROOT / "dashboards"
    installed = tmp_path / "var/lib/grafana/dashboards/gputuned"
    assert sorted(path.name for path in installed.iterdir()) == sorted(path.name for path in dashboards.glob("*.json"))
    for path in installed.iterdir():
        assert path.read_text() == (dashboards / path.name).read_text()
    for kind in ("datasources", "dashboards"):
        provisioned = tmp_path / f"etc/grafana/provisioning/{kind}/gputuned.yaml"
        assert provisioned.read_text() == (dashboards / f"provisioning/{kind}/gputuned.yaml").read_text()


def test_the_installed_unit_verifies(tmp_path, systemd_analyze):
    assert install(tmp_path).returncode == 0
    result = subprocess.run(
        [systemd_analyze, "verify", str(tmp_path / "etc/systemd/system/gputuned.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_is_hardened_to_an_exposure_of_at_most_3(tmp_path, systemd_analyze):
    assert install(tmp_path).returncode == 0
    result = subprocess.run(
        [systemd_analyze, "security", "--offline=yes", str(tmp_path / "etc/systemd/system/gputuned.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for gputuned.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= 3.0


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
