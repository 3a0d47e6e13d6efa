"""Shared test fixtures: fixture host trees, the fake NVML, and the real tools tests need."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURE_HOSTS = Path(__file__).parent / "fixtures" / "hosts"
INTEGRATION = Path(__file__).parent / "integration"
REPO_ROOT = Path(__file__).parent.parent


def host_root(name: str) -> tuple[Path, Path]:
    """(proc_root, sys_root) of a fixture host tree."""
    base = FIXTURE_HOSTS / name
    return base / "proc", base / "sys"


def debian_tool(command: str, package: str) -> str:
    """The path of a tool the tests need; a clear failure (never a skip) when it is missing."""
    path = shutil.which(command)
    if path is None:
        pytest.fail(f"{command} is not installed (Debian package {package!r}); scripts/setup.sh installs it")
    return path


@pytest.fixture
def promtool() -> str:
    return debian_tool("promtool", "prometheus")


@pytest.fixture
def systemd_analyze() -> str:
    return debian_tool("systemd-analyze", "systemd")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration/ starts real processes or servers: marked
    `integration`, so that `pytest -m "not integration"` is the fast lane (CONTRIBUTING.md).
    Unit tests that start a thread, a process or a server mark themselves."""
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)
