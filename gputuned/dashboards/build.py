"""The Grafana dashboards built from code with grafana-foundation-sdk, so they never drift from
the metrics: `gputuned dashboards build` writes them and the committed dashboards/ is its output.
"""

from __future__ import annotations

from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from gputuned.dashboards import fleet, host, tuning
from gputuned.dashboards.provisioning import provisioning_files

BOARDS = {"gputuned-host.json": host.build, "gputuned-tuning.json": tuning.build, "gputuned-fleet.json": fleet.build}


def dashboard_files() -> dict[str, str]:
    """File name -> dashboard JSON text, stable byte for byte between builds."""
    encoder = JSONEncoder(sort_keys=True, indent=2)
    return {name: encoder.encode(build().build()) + "\n" for name, build in BOARDS.items()}


def generated_files() -> dict[str, str]:
    """Everything `gputuned dashboards build` writes, by path below its output directory."""
    files = dashboard_files()
    files.update({f"provisioning/{path}": text for path, text in provisioning_files().items()})
    return files


def write_files(files: dict[str, str], out: Path) -> list[Path]:
    written = []
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
