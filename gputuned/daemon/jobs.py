"""Failures of the daemon's scheduled jobs (sampling, each worker's tuning), told once and counted.

APScheduler reports a job that raised as an event; a job that fails every tick would
otherwise fill the journal with one traceback a second. Each distinct error (job and
exception) is logged with its traceback the first time it is seen, and every failure
counts in `gputuned_job_errors_total{job}`, which the store serves.
"""

from __future__ import annotations

import logging

from gputuned.store import SampleStore

log = logging.getLogger(__name__)


class JobErrors:
    def __init__(self, store: SampleStore) -> None:
        self._store = store
        self._told: set[tuple[str, str]] = set()

    def register(self, job: str) -> None:
        """A job whose failures are counted from 0."""
        self._store.register_job(job)

    def failed(self, job: str, exception: BaseException, traceback: str | None) -> None:
        self._store.count_job_error(job)
        key = (job, repr(exception))
        if key in self._told:
            return
        self._told.add(key)
        log.error(
            "job %s failed: %s (told once; gputuned_job_errors_total counts every time)\n%s", job, exception, traceback or ""
        )
