#!/usr/bin/env bash
# Installs everything the tests need (see setup.sh --test), then runs the whole suite with pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec .venv/bin/python -m pytest "$@"
