"""`gputuned vllm-plugin`: the vLLM plugin as a wheel of its own, for vLLM's environment.

The plugin runs inside vLLM's engine core, in vLLM's Python environment, which should not
receive gputuned's requirements (prometheus-client, psutil, APScheduler, a torch of its
own). The wheel holds the plugin and the few standard-library-only modules of gputuned it
imports (the control protocol and the knob declarations), declares its entry point in
`vllm.general_plugins`, and requires nothing:

    gputuned vllm-plugin --out /tmp && /opt/vllm/bin/pip install /tmp/gputuned_vllm_plugin-*.whl

Written with the standard library's zipfile (the wheel format, PEP 427, is a zip with three
metadata files), so building it needs no build backend on the operator's host. The
modules keep their `gputuned.*` names: install the wheel only where gputuned itself is not
installed (where it is, its own distribution carries the same entry point).
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import gputuned

DISTRIBUTION = "gputuned_vllm_plugin"
ENTRY_POINT = "gputuned = gputuned.vllm.plugin:register"
# The plugin and what it imports, all of it standard library underneath.
MODULES = (
    "__init__.py",
    "knobs.py",
    "procfs.py",
    "control/__init__.py",
    "control/messages.py",
    "control/peers.py",
    "control/protocol.py",
    "control/server.py",
    "vllm/__init__.py",
    "vllm/plugin.py",
)
# A fixed time inside the archive: the same sources give the same wheel.
TIMESTAMP = (2020, 1, 1, 0, 0, 0)


def build(directory: Path) -> Path:
    """Writes the wheel into `directory`; returns its path."""
    version = gputuned.__version__
    dist_info = f"{DISTRIBUTION}-{version}.dist-info"
    files: dict[str, bytes] = {}
    package = Path(gputuned.__file__).parent
    for module in MODULES:
        files[f"gputuned/{module}"] = (package / module).read_bytes()
    files[f"{dist_info}/METADATA"] = (
        "Metadata-Version: 2.1\n"
        f"Name: {DISTRIBUTION.replace('_', '-')}\n"
        f"Version: {version}\n"
        "Summary: gputuned's vLLM plugin: the scheduler's live knobs on gputuned's control socket\n"
        "Requires-Python: >=3.10\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: gputuned\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{dist_info}/entry_points.txt"] = f"[vllm.general_plugins]\n{ENTRY_POINT}\n".encode()
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in files.items()]
    files[f"{dist_info}/RECORD"] = ("\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n").encode()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{DISTRIBUTION}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, TIMESTAMP)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, data)
    return path


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
