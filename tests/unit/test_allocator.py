"""The worker's malloc setting: memory a batch frees is there for the next one, unfaulted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gputuned.testing.processes import REPO_ROOT
from gputuned.worker.allocator import keep_freed_memory

pytestmark = pytest.mark.integration  # starts threads, processes or servers

# A batch's pattern of activations, repeated, and the page faults of its last repetition.
# "main": tensors allocated and freed in an overlapping order in the main thread, the
# largest past glibc's mmap threshold, which it unmaps on free and faults again. "lane": in
# a thread of its own, as a lane runs a batch, eight layers of SIZE MiB with LIVE alive at
# once: past 64 MiB together they outgrow a thread arena's heap, and a block over 64 MiB
# is mapped for itself.
BATCHES = """
import resource, sys, threading, torch
from gputuned.worker.allocator import keep_freed_memory

if sys.argv[1] == "keep":
    assert keep_freed_memory()

def main_thread():
    size = 40 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    first = torch.empty(size, dtype=torch.uint8).fill_(1)
    second = torch.empty(size // 3, dtype=torch.uint8).fill_(2)
    del first
    third = torch.empty(size // 5).fill_(3)
    del second, third
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def lane():
    size, alive = int(sys.argv[3]) << 20, int(sys.argv[4])
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    live = []
    for layer in range(8):
        live.append(torch.empty(size, dtype=torch.uint8).fill_(layer))
        if len(live) > alive:
            live.pop(0)
    del live
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before

if sys.argv[2] == "main":
    faults = [main_thread() for _ in range(30)]
else:
    faults = []
    lane_thread = threading.Thread(target=lambda: faults.extend(lane() for _ in range(30)))
    lane_thread.start()
    lane_thread.join()
print(faults[-1])
"""


def last_batch_faults(mode: str, *pattern: str) -> int:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", BATCHES, mode, *pattern], env=env, capture_output=True, text=True, timeout=120)
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
        assert last_batch_faults("default", "main") > 5000  # glibc's own setting faults ~18,000 pages a batch here
    assert last_batch_faults("keep", "main") < 100


@pytest.mark.skipif("CS_GNU_LIBC_VERSION" not in os.confstr_names, reason="glibc's malloc only")
@pytest.mark.parametrize(
    ("size_mib", "alive"),
    [
        (80, 1),  # one block past a heap: mapped for itself, and unmapped when freed (81,920 faults here without the fix)
        (20, 3),  # 60 MiB and the thread's other blocks outgrow a heap: its second heap unmapped when freed (2,561)
    ],
)
def test_a_lane_thread_reuses_the_memory_its_last_batch_freed(size_mib: int, alive: int) -> None:
    if size_mib > 64 and not huge_pages_always():
        assert last_batch_faults("default", "lane", str(size_mib), str(alive)) > 5000
    assert last_batch_faults("keep", "lane", str(size_mib), str(alive)) < 100


def test_the_users_own_malloc_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TOP_PAD_", str(64 << 20))
    assert keep_freed_memory() is False
