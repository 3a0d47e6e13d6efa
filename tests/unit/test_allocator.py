"""The worker's malloc setting: memory a batch frees is there for the next one, unfaulted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gputuned.testing.processes import REPO_ROOT
from gputuned.worker.allocator import keep_freed_memory

# A batch's pattern of activations, repeated: tensors allocated and freed in an overlapping
# order, the largest past glibc's mmap threshold, which it unmaps on free and faults again.
BATCHES = """
import resource, sys, torch
from gputuned.worker.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
size = 40 << 20
faults = 0
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    first = torch.empty(size, dtype=torch.uint8).fill_(1)
    second = torch.empty(size // 3, dtype=torch.uint8).fill_(2)
    del first
    third = torch.empty(size // 5).fill_(3)
    del second, third
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults)
"""


def last_batch_faults(mode: str) -> int:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", BATCHES, mode], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def huge_pages_always() -> bool:
    """Transparent huge pages for every mapping: a fault then maps 2 MiB, not 4 KiB."""
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif("CS_GNU_LIBC_VERSION" not in os.confstr_names, reason="glibc's malloc only")
def test_a_batch_reuses_the_memory_the_last_one_freed() -> None:
    if not huge_pages_always():
        assert last_batch_faults("default") > 5000  # glibc's own setting faults ~18,000 pages a batch here
    assert last_batch_faults("keep") < 100


def test_the_users_own_malloc_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TOP_PAD_", str(64 << 20))
    assert keep_freed_memory() is False
