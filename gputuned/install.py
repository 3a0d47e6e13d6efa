"""`gputuned install [--root DIR]`: put the systemd unit, the example config and the Grafana
dashboards with their provisioning files in place.

With --root everything goes below DIR (for packaging and tests). An existing config is
never overwritten; the unit and the dashboards are generated files and always replaced.
The unit's ExecStart is pointed at the gputuned being installed.
"""

from __future__ import annotations

import pwd
import shutil
import sys
from importlib import resources
from pathlib import Path

from gputuned.dashboards import dashboard_files, write_files
from gputuned.dashboards.provisioning import DASHBOARD_DIR, provisioning_files

UNIT_PATH = Path("etc/systemd/system/gputuned.service")
CONFIG_PATH = Path("etc/gputuned/gputuned.toml")
GRAFANA_PROVISIONING = Path("etc/grafana/provisioning")
PLACEHOLDER_EXEC = "ExecStart=/usr/local/bin/gputuned "


def default_executable() -> str:
    """The command that runs this gputuned: its console script, or this Python with -m."""
    found = shutil.which("gputuned")
    return str(Path(found).resolve()) if found else f"{sys.executable} -m gputuned"


def unit_text(executable: str) -> str:
    text = resources.files("gputuned").joinpath("data/gputuned.service").read_text()
    if PLACEHOLDER_EXEC not in text:
        raise RuntimeError("the shipped unit has no ExecStart to point at the installed gputuned")
    return text.replace(PLACEHOLDER_EXEC, f"ExecStart={executable} ")


def install(root: Path, executable: str) -> list[str]:
    """Installs below `root`; returns what was done and what to run next, for the user."""
    report = []
    unit = root / UNIT_PATH
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(unit_text(executable))
    report.append(f"installed {unit}")
    config = root / CONFIG_PATH
    if config.exists():
        report.append(f"kept the existing {config}")
    else:
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(resources.files("gputuned").joinpath("data/gputuned.toml").read_text())
        report.append(f"installed the example config {config}")
    dashboards = root / DASHBOARD_DIR.relative_to("/")
    write_files(dashboard_files(), dashboards)
    report.append(f"installed the Grafana dashboards in {dashboards}")
    for path in write_files(provisioning_files(), root / GRAFANA_PROVISIONING):
        report.append(f"installed {path}")
    report.append("")
    report.append("next:")
    try:
        pwd.getpwnam("gputuned")
    except KeyError:
        report.append("  useradd --system --no-create-home --shell /usr/sbin/nologin gputuned")
    report += ["  systemctl daemon-reload", "  systemctl enable --now gputuned", "  gputuned status",
               "  systemctl restart grafana-server   # if Grafana runs here: it reads provisioning at start"]
    return report
