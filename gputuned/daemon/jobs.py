"""What the daemon's scheduled jobs report: failures told once and counted, skipped rounds counted.

APScheduler reports a job that raised, or a run skipped because the previous one was still
going, as events. A job that fails every tick would otherwise fill the journal with one
traceback a second: each distinct error (job and exception) is logged with its traceback
the first time, and every failure counts in `gputuned_job_errors_total{job}`. A skipped
sampling round counts in `gputuned_sampler_skipped_rounds_total`. Both are served from
the store.
"""

from __future__ import annotations

import logging

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, JobExecutionEvent, JobSubmissionEvent
from apscheduler.schedulers.base import BaseScheduler

from gputuned.store import SampleStore

log = logging.getLogger(__name__)


class JobEvents:
    def __init__(self, store: SampleStore, sampling_job: str) -> None:
        self._store = store
        self._sampling_job = sampling_job
        self._told: set[tuple[str, str]] = set()

    def attach(self, scheduler: BaseScheduler) -> None:
        """Listens to `scheduler`'s job events, and quiets its executors' own log, which would
        print a traceback for every failed run (these events are reported here instead)."""
        logging.getLogger("apscheduler.executors").setLevel(logging.CRITICAL)
        scheduler.add_listener(self._on_event, EVENT_JOB_ERROR | EVENT_JOB_MAX_INSTANCES)

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

    def _on_event(self, event: JobExecutionEvent | JobSubmissionEvent) -> None:
        if event.code == EVENT_JOB_MAX_INSTANCES:
            if event.job_id == self._sampling_job:
                self._store.count_skipped_round()
        elif isinstance(event, JobExecutionEvent) and event.exception is not None:
            self.failed(event.job_id, event.exception, event.traceback)
