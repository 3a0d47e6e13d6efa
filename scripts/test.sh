#!/usr/bin/env bash
# Installs everything the tests need (see setup.sh --test), checks lint, format and types
# (ruff and mypy, configured in pyproject.toml), then runs the whole suite with pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
