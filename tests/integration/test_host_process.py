"""The host collector watching a real child process through the real psutil."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from gputuned.collectors.host import HostCollector
from gputuned.samples import WorkerTarget
from tests.helpers import values


def test_a_real_worker_process_cpu_memory_and_threads():
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(50_000_000); time.sleep(30)"])
    try:
        collector = HostCollector(psutil)
        for _ in range(100):  # until the child has allocated its buffer (bounded: 5 s)
            out = collector.collect([WorkerTarget(pid=child.pid)])
            if values(out, "gputuned_worker_resident_memory_bytes").get((), 0) > 50_000_000:
                break
            time.sleep(0.05)
        assert values(out, "gputuned_worker_resident_memory_bytes")[("worker",)] > 50_000_000
        assert values(out, "gputuned_worker_threads") == {("worker",): 1.0}
        assert set(values(out, "gputuned_worker_cpu_seconds_total")) == {("worker", "user"), ("worker", "system")}
    finally:
        child.kill()
        child.wait()
    gone = collector.collect([WorkerTarget(pid=child.pid)])
    assert gone.errors == []
    assert f"worker pid {child.pid} is gone" in gone.notes
