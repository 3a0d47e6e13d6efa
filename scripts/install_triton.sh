#!/usr/bin/env bash
# Installs a real Triton Inference Server (2.51, from NVIDIA's nvidia-pytriton wheel on PyPI:
# the server binary, its Python backend and their bundled libraries) under DIR (default
# .triton), to try gputuned's Triton worker kind on a machine without NVIDIA's container.
#
#   DIR/bin/tritonserver   runs the server with its libraries and the Python backend's
#                          interpreter set up; pass it to gputuned as triton_server.
#   DIR/python/bin/python  the interpreter PyTriton runs under (bench/peers.py), with the
#                          wheel's pytriton package on PYTHONPATH=DIR/dist.
#
# The Python backend's stub for Python 3.11 links the system's libpython3.11 (Debian's
# 3.11.2) and runs the first `python3` on PATH as its interpreter home, so the stdlib must
# be that same Python's: DIR/python is a virtual environment of /usr/bin/python3.11. Its
# site-packages also reach SITE (default: this checkout's .venv), where torch and numpy for
# the models come from; C extensions built for CPython 3.11 load under either 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=$(realpath -m "${1:-.triton}")
site=$(realpath -m "${2:-.venv/lib/python3.11/site-packages}")
pip=${PIP:-.venv/bin/python -m pip}
system_python=${TRITON_PYTHON:-/usr/bin/python3.11}

if [ ! -x "$system_python" ]; then
    echo "install_triton.sh: $system_python is missing (Debian: apt-get install python3.11 python3.11-venv libpython3.11)" >&2
    exit 2
fi
[ -x "$dir/dist/pytriton/tritonserver/bin/tritonserver" ] ||
    $pip install --quiet --disable-pip-version-check --no-deps --target "$dir/dist" nvidia-pytriton==0.7.0
server="$dir/dist/pytriton/tritonserver"
cp "$server/python_backend_stubs/3.11/triton_python_backend_stub" "$server/backends/python/"
"$system_python" -m venv --without-pip --clear "$dir/python"
echo "$site" >"$dir/python/lib/python3.11/site-packages/gputuned-site.pth"
# PyTriton's own requirements, for bench/peers.py (which runs PyTriton itself); numpy, grpcio,
# protobuf and tritonclient come from SITE. pip is SITE's, run by DIR/python.
"$dir/python/bin/python" -m pip install --quiet --disable-pip-version-check \
    "pyzmq>=23.0" "sh>=1.14" "typing_inspect>=0.6.0" "wrapt>=1.11" "typer>=0.9.0" "importlib_metadata>=7.0.1"
mkdir -p "$dir/bin"
cat >"$dir/bin/tritonserver" <<EOF
#!/bin/sh
# Written by gputuned's scripts/install_triton.sh.
export LD_LIBRARY_PATH="$dir/dist/nvidia_pytriton.libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export PATH="$dir/python/bin:\$PATH"
exec "$server/bin/tritonserver" --backend-directory="$server/backends" --cache-directory="$server/caches" "\$@"
EOF
chmod +x "$dir/bin/tritonserver"
echo "$dir/bin/tritonserver"
