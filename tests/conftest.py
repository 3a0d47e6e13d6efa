"""Shared test fixtures: fixture host trees, the fake NVML, and the real tools tests need."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURE_HOSTS = Path(__file__).parent / "fixtures" / "hosts"
REPO_ROOT = Path(__file__).parent.parent


def host_root(name: str) -> tuple[Path, Path]:
    """(proc_root, sys_root) of a fixture host tree."""
    base = FIXTURE_HOSTS / name
    return base / "proc", base / "sys"


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed (Debian package 'prometheus'); scripts/setup.sh installs it")
    return path
