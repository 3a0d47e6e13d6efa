#!/usr/bin/env bash
# The main job, on this machine: installs gputuned, runs the daemon supervising the
# built-in worker (resnet-mini; on the GPU when there is one), and drives it with the
# built-in load generator (Poisson arrivals, DEMO_RATE per second for DEMO_SECONDS).
# Metrics: http://127.0.0.1:9842/metrics  Inference API: http://127.0.0.1:8000/v2
# Status:  .venv/bin/gputuned status --socket .demo/run/admin.sock
# Ctrl-C stops the load; the daemon then drains the worker and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

mkdir -p .demo
.venv/bin/gputuned run --config scripts/demo.toml --runtime-dir .demo/run --state-dir .demo/state "$@" &
daemon=$!
trap 'kill -TERM "$daemon" 2>/dev/null; wait "$daemon"' EXIT

for _ in $(seq 1 120); do  # until the worker serves (model load takes a few seconds)
    if .venv/bin/gputuned status --socket .demo/run/admin.sock --json 2>/dev/null | grep -q '"state": "ready"'; then
        break
    fi
    sleep 1
done
.venv/bin/gputuned status --socket .demo/run/admin.sock
echo
echo "metrics on http://127.0.0.1:9842/metrics; load for ${DEMO_SECONDS:-600} s at ${DEMO_RATE:-150}/s (Ctrl-C stops)"
.venv/bin/gputuned load http://127.0.0.1:8000 --rate "${DEMO_RATE:-150}" --duration "${DEMO_SECONDS:-600}" --requests 100000000 || true
.venv/bin/gputuned status --socket .demo/run/admin.sock
