"""Job failures and skipped rounds as a real APScheduler reports them, through the daemon's listener."""

from __future__ import annotations

import logging
import threading

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from gputuned.daemon.jobs import JobEvents
from gputuned.store import SampleStore
from gputuned.testing.processes import wait_for

pytestmark = pytest.mark.integration


def test_a_job_that_keeps_failing_is_told_once_and_counted_every_time(caplog):
    store = SampleStore(2)
    events = JobEvents(store, "sample")
    runs = {"n": 0}
    release = threading.Event()

    def failing() -> None:
        runs["n"] += 1
        raise (ValueError("no window yet") if runs["n"] <= 4 else KeyError("streams"))

    def slow_sampling() -> None:
        release.wait(2.0)  # longer than its interval: the next runs are skipped

    scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
    events.attach(scheduler)
    events.register("sample")
    events.register("tune:worker")
    with caplog.at_level(logging.ERROR):
        scheduler.add_job(failing, "interval", seconds=0.1, id="tune:worker")
        scheduler.add_job(slow_sampling, "interval", seconds=0.1, id="sample")
        scheduler.start()
        try:
            wait_for(lambda: store.job_errors()["tune:worker"] >= 6 and store.skipped_rounds() >= 3, 20, "failures and skips")
        finally:
            release.set()
            scheduler.shutdown(wait=True)
    told = [record.getMessage() for record in caplog.records]  # everything logged, APScheduler's own included
    assert store.job_errors()["sample"] == 0
    assert len(told) == 2, told  # two distinct errors, each told once with its traceback
    assert "no window yet" in told[0] and ", in failing" in told[0] and "KeyError" in told[1]  # with where it was raised
