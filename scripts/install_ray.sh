#!/usr/bin/env bash
# Installs Ray Serve (a peer server for bench/peers.py) in a virtual environment of its own
# under DIR (default .ray), so that its pinned requirements (pydantic, fastapi, uvicorn,
# grpcio...) never meet gputuned's. torch and numpy come from SITE (default: this checkout's
# .venv), reached through a .pth file after the environment's own packages.
#
#   DIR/bin/python   runs bench/ray_server.py
set -euo pipefail
cd "$(dirname "$0")/.."

dir=$(realpath -m "${1:-.ray}")
site=$(realpath -m "${2:-.venv/lib/python3.11/site-packages}")
python=${RAY_PYTHON:-.venv/bin/python}

if [ ! -x "$dir/bin/python" ] || ! "$dir/bin/python" -c "import ray.serve" 2>/dev/null; then
    base=$("$python" -c 'import sys; print(sys.base_prefix)')/bin/python3
    "$base" -m venv --clear "$dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "ray[serve]==2.60.0"
fi
echo "$site" >"$dir/lib/python3.11/site-packages/gputuned-site.pth"
echo "$dir/bin/python"
