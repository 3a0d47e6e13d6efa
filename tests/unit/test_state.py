"""The knob state survives a full disk: old file intact, values kept in memory, saved once space is back."""

from __future__ import annotations

import errno
import json
import os

from gputuned.daemon.state import KnobStore

WORKLOAD = "resnet-mini|cpu|FP32[3,64,64]"


def test_a_full_disk_leaves_the_old_file_whole_and_keeps_the_knobs_in_memory(tmp_path, monkeypatch):
    store = KnobStore(tmp_path)
    store.accept(WORKLOAD, {"max_batch_size": 8})
    saved = (tmp_path / "knobs.json").read_bytes()
    real_fsync = os.fsync

    def no_space(fd: int) -> None:  # the kernel's answer when the data cannot be written out
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    store.accept(WORKLOAD, {"max_batch_size": 16})
    assert (tmp_path / "knobs.json").read_bytes() == saved  # untouched, still valid
    assert sorted(path.name for path in tmp_path.iterdir()) == ["knobs.json"]  # no temporary file left behind
    assert store.persist_error.startswith(os.strerror(errno.ENOSPC))
    assert store.knobs_for(WORKLOAD) == {"max_batch_size": 16}  # kept in memory

    monkeypatch.setattr(os, "fsync", real_fsync)
    store.accept(WORKLOAD, {"streams": 2})
    assert store.persist_error is None
    assert json.loads((tmp_path / "knobs.json").read_text())["workloads"][WORKLOAD] == {"max_batch_size": 16, "streams": 2}
    reloaded = KnobStore(tmp_path)
    reloaded.load()
    assert reloaded.knobs_for(WORKLOAD) == {"max_batch_size": 16, "streams": 2}
