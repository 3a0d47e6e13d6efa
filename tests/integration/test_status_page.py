"""The landing page of the metrics port in a real headless browser (Debian's chromium-headless-shell)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gputuned.control.client import ControlClient
from gputuned.testing.processes import REPO_ROOT, free_port, running_supervising_daemon, wait_for, worker_status
from tests.conftest import debian_tool

pytestmark = pytest.mark.integration
AGENT_WORKER = Path(__file__).parent / "agent_worker.py"
ARTIFACTS = REPO_ROOT / "test-artifacts"


def browser(binary: str, url: str, *args: str, home: Path) -> str:
    """What the browser made of the page (its DOM after load, or nothing for a screenshot)."""
    command = [binary, "--no-sandbox", "--disable-gpu", "--user-data-dir=" + str(home), *args, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env={"HOME": str(home)})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def batch_sizes(dom: str) -> list[str]:
    """The max_batch_size of each worker as the page shows it, in page order."""
    return re.findall(r"<td>max_batch_size</td><td>(\d+)</td>", dom)


def test_the_page_shows_both_workers_and_follows_a_knob_change(tmp_path: Path):
    chromium = debian_tool("chromium-headless-shell", "chromium-headless-shell")
    command = [sys.executable, str(AGENT_WORKER), "--socket", "{control_socket}"]
    workers = [{"name": name, "command": command, "listen": f"127.0.0.1:{free_port()}"} for name in ("left", "right")]
    with running_supervising_daemon(tmp_path, workers=workers, tuning={"mode": "frozen"}) as (_, metrics, _w, admin):
        page = metrics.removesuffix("metrics")
        dom = browser(chromium, page, "--dump-dom", home=tmp_path)
        with ControlClient(admin) as client:
            client.set({"max_batch_size": 8}, "right")
        changed = wait_for(
            lambda: batch_sizes(browser(chromium, page, "--dump-dom", home=tmp_path)) == ["1", "8"], 20, "the change"
        )
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "status-page.png"
        shot.unlink(missing_ok=True)
        browser(chromium, page, f"--screenshot={shot}", "--window-size=1200,1400", home=tmp_path)
        right = worker_status(admin, "right")
    assert 'id="worker-left"' in dom and 'id="worker-right"' in dom
    assert dom.index('id="worker-left"') < dom.index('id="worker-right"')
    assert batch_sizes(dom) == ["1", "1"]  # both at their default before the change
    assert changed and right["knobs"]["max_batch_size"] == 8
    assert 'href="/metrics"' in dom and "<svg" in dom
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"\nscreenshot of the status page: {shot}")
