"""Keeps the memory a batch frees for the next batch instead of giving it back to the kernel.

glibc's malloc serves large blocks with mmap and unmaps them when freed, and trims the
free top of a heap back to the kernel once it passes a threshold. A model's activations
are exactly such blocks, allocated and freed once a batch, so every batch faulted its
pages in again: the transformer encoder (bench/serving_models.py) at batch 32 took
270-1,470 minor faults a batch, 11-75 us an item of system time on a ~240 us item, in
the raw loop and the worker's lanes alike, depending on where the heap's top happened to
lie. PyTorch's CPU tuning guide answers this with jemalloc or tcmalloc preloaded; glibc's
own `mallopt` does the same from inside the process, with nothing to install or preload:
no mmap for blocks a heap can hold, and no trimming below 1 GiB of free top.

A lane runs its batches in a thread of its own, and glibc gives each thread an arena of
its own, made of heaps of at most 64 MiB: a batch whose activations outgrow one heap gets
a new one, which glibc unmaps as soon as the batch frees it whatever the thresholds say,
and a block over 64 MiB comes from mmap whatever M_MMAP_MAX says: a convolutional model at a
large batch then faults in thousands of pages every batch and computes a third slower
(bench/malloc.py measures it). So every thread allocates from the one main arena, whose
heap grows and stays. The worker's memory then stays at its largest batch's, as a CUDA
caching allocator's does. The price is one lock across the threads for every block past
glibc's per-thread cache (1 KiB): a few a layer for a lane.

A user's own malloc settings (MALLOC_* variables, glibc.malloc tunables) or a libc that is
not glibc are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 1 << 30
USER_SETTINGS = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_ARENA_MAX",
    "MALLOC_ARENA_TEST",
)


def keep_freed_memory() -> bool:
    """Sets glibc's malloc to keep freed memory mapped, in one arena for every thread;
    returns whether it did. Call it before the threads that allocate start: a thread keeps
    the arena its first allocation took."""
    if any(name in os.environ for name in USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        log.info("malloc left as the environment sets it")
        return False
    if "CS_GNU_LIBC_VERSION" not in os.confstr_names or not os.confstr("CS_GNU_LIBC_VERSION"):
        return False  # not glibc: its mallopt, if any, takes other parameters
    libc = ctypes.CDLL(None)
    # mallopt returns 1 on success, 0 on error.
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, 1))
    return all(libc.mallopt(parameter, value) for parameter, value in settings)
