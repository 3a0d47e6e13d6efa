"""Installing as an operator would: a wheel built from the checkout, pip-installed into a
fresh virtual environment of Debian's Python under /opt, `gputuned install`, the unit
verified, its ExecStart started as the unit's user, and `gputuned uninstall`.

systemd itself does not run here, so what these tests cannot show is systemd applying the
unit: the sandbox (ProtectHome, PrivateTmp, the syscall filter), RuntimeDirectory= and
StateDirectory= creating the directories, the watchdog. The directories are made here as
systemd would make them, and `systemd-analyze verify` and `security` check the unit text.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gputuned.testing.processes import REPO_ROOT, free_port

pytestmark = pytest.mark.integration

DEBIAN_PYTHON = "/usr/bin/python3.11"
SERVICE_USER = "gputuned"


def run(*command: str | Path, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(word) for word in command], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT
    )
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def opt() -> Iterator[Path]:
    """A directory under /opt, as an operator would install into, readable by the service user."""
    if os.geteuid() != 0:
        pytest.fail("these tests install under /opt and start the unit as its user: they need root (CI has it)")
    Path("/opt").mkdir(exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="gputuned-test-", dir="/opt"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(opt: Path) -> Path:
    """The console script of gputuned pip-installed from a freshly built wheel into /opt/.../venv."""
    wheels = opt / "dist"
    # The sdist, then the wheel built from it (so the sdist is shown to be complete). Pure
    # Python: the serving path's compilation is tested elsewhere, and takes a minute. The
    # build requirements are the test environment's own: nothing is fetched for the build.
    env = {**os.environ, "GPUTUNED_PURE_PYTHON": "1"}
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", wheels, ".", env=env)
    (wheel,) = wheels.glob("gputuned-*.whl")
    assert len(list(wheels.glob("gputuned-*.tar.gz"))) == 1
    venv = opt / "venv"
    run(DEBIAN_PYTHON, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "--quiet", "--disable-pip-version-check", wheel)
    return venv / "bin" / "gputuned"


def install(gputuned: Path, root: Path, *more: str) -> subprocess.CompletedProcess:
    return subprocess.run([gputuned, "install", "--root", root, *more], capture_output=True, text=True, timeout=60)


def test_install_writes_the_unit_for_itself_and_the_config_and_keeps_an_existing_config(installed, tmp_path):
    first = install(installed, tmp_path)
    assert first.returncode == 0, first.stderr
    unit = (tmp_path / "etc/systemd/system/gputuned.service").read_text()
    assert f"ExecStart={installed} run --config /etc/gputuned/gputuned.toml" in unit
    docs = re.search(r"^Documentation=file://(\S+)$", unit, re.MULTILINE)
    assert docs and Path(docs.group(1)).read_text() == (REPO_ROOT / "README.md").read_text()
    config = tmp_path / "etc/gputuned/gputuned.toml"
    assert config.read_text() == (REPO_ROOT / "systemd/gputuned.toml").read_text()
    assert "it names no worker, so gputuned monitors only" in first.stdout
    assert "systemctl enable --now gputuned" in first.stdout
    assert not (tmp_path / "etc/grafana").exists() and not (tmp_path / "var/lib/grafana").exists()  # only when asked
    config.write_text('[log]\nlevel = "debug"\n')
    second = install(installed, tmp_path)
    assert f"kept the existing {config}" in second.stdout
    assert config.read_text() == '[log]\nlevel = "debug"\n'


def test_a_gputuned_the_units_sandbox_would_hide_is_refused_saying_where_to_install(installed, tmp_path):
    # tmp_path lies under /tmp, which PrivateTmp=yes replaces with the service's own.
    hidden = tmp_path / "gputuned"
    shutil.copy(installed, hidden)
    result = install(installed, tmp_path / "root", "--exec", str(hidden))
    assert result.returncode == 1 and "which the unit hides (PrivateTmp=yes)" in result.stderr, result.stderr
    assert "python3 -m venv /opt/gputuned" in result.stderr
    assert not (tmp_path / "root").exists()
    missing = install(installed, tmp_path / "root", "--exec", "/nowhere/gputuned")
    assert missing.returncode == 1 and "/nowhere/gputuned does not exist" in missing.stderr


def test_grafana_files_when_asked_and_uninstall_removes_what_install_wrote(installed, tmp_path):
    assert install(installed, tmp_path, "--grafana").returncode == 0
    dashboards = REPO_ROOT / "dashboards"
    boards = tmp_path / "var/lib/grafana/dashboards/gputuned"
    assert sorted(path.name for path in boards.iterdir()) == sorted(path.name for path in dashboards.glob("*.json"))
    for path in boards.iterdir():
        assert path.read_text() == (dashboards / path.name).read_text()
    for kind in ("datasources", "dashboards"):
        provisioned = tmp_path / f"etc/grafana/provisioning/{kind}/gputuned.yaml"
        assert provisioned.read_text() == (dashboards / f"provisioning/{kind}/gputuned.yaml").read_text()
    (tmp_path / "var/lib/gputuned").mkdir(parents=True)
    (tmp_path / "var/lib/gputuned/knobs.json").write_text("{}")
    kept = run(installed, "uninstall", "--root", tmp_path)
    assert not (tmp_path / "etc/systemd/system/gputuned.service").exists() and not list(boards.iterdir())
    assert (tmp_path / "etc/gputuned/gputuned.toml").exists() and (tmp_path / "var/lib/gputuned/knobs.json").exists()
    assert "--purge removes it" in kept.stdout
    run(installed, "uninstall", "--root", tmp_path, "--purge")
    assert not (tmp_path / "etc/gputuned").exists() and not (tmp_path / "var/lib/gputuned").exists()


def test_the_installed_unit_verifies_and_stays_hardened(installed, tmp_path, systemd_analyze):
    assert install(installed, tmp_path).returncode == 0
    unit = tmp_path / "etc/systemd/system/gputuned.service"
    verify = subprocess.run([systemd_analyze, "verify", unit], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    security = subprocess.run([systemd_analyze, "security", "--offline=yes", unit], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for gputuned.service: ([0-9.]+)", security.stdout)
    assert match, security.stdout[-2000:] + security.stderr
    print(f"systemd-analyze security exposure: {match.group(1)}")
    assert float(match.group(1)) <= 3.0


def service_user() -> pwd.struct_passwd:
    """The unit's User=, created as `gputuned install` tells the operator to."""
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        run("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER)
        return pwd.getpwnam(SERVICE_USER)


def test_the_units_execstart_runs_as_its_user_and_stops_cleanly(installed, opt, systemd_analyze):
    root = opt / "root"
    assert install(installed, root).returncode == 0
    unit = (root / "etc/systemd/system/gputuned.service").read_text()
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.MULTILINE).group(1).split()
    user = service_user()
    assert re.search(rf"^User={SERVICE_USER}$", unit, re.MULTILINE)
    # What RuntimeDirectory= and StateDirectory= would create: owned by the user, mode 0750.
    runtime, state = opt / "run", opt / "state"
    for directory in (runtime, state):
        directory.mkdir(mode=0o750)
        os.chown(directory, user.pw_uid, user.pw_gid)
    config = exec_start[exec_start.index("--config") + 1]
    exec_start[exec_start.index("--config") + 1] = str(root / config.lstrip("/"))
    port = free_port()
    command = [
        "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--",
        *exec_start, "--runtime-dir", str(runtime), "--state-dir", str(state), "--metrics-listen", f"127.0.0.1:{port}",
    ]  # fmt: skip
    log = (opt / "daemon.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd="/")
    try:
        deadline, body = time.monotonic() + 60, ""
        while time.monotonic() < deadline and "gputuned_build_info" not in body:
            time.sleep(0.5)
            assert process.poll() is None, (opt / "daemon.log").read_text()
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                continue
        assert "gputuned_build_info{" in body and "gputuned_worker_up" not in body  # monitors only
        assert (runtime / "admin.sock").stat().st_uid == user.pw_uid
        status = subprocess.run(
            [installed, "status", "--socket", runtime / "admin.sock"], capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0 and "workers: none supervised" in status.stdout, status.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0, (opt / "daemon.log").read_text()
    assert "Traceback" not in (opt / "daemon.log").read_text()
