#!/usr/bin/env bash
# Installs gputuned and runs the daemon in the foreground, serving /metrics on
# http://127.0.0.1:9842/metrics (Ctrl-C stops it). Extra arguments go to `gputuned run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gputuned run --no-worker --config systemd/gputuned.toml "$@"
