"""Helpers for tests that drive shared/queue/ by hand."""

from __future__ import annotations

from shared.contract import JobError, JobResult
from shared.queue.worker import MicroBatch


class NeverRuns:
    """A micro-batch handler for workers whose jobs a test starts and finishes by hand."""

    def run(self, batch: MicroBatch) -> list[JobResult | JobError]:
        raise AssertionError("this test runs no micro-batch")

    def failed(self, exc: Exception, job_id: str) -> JobError:
        raise AssertionError("this test runs no micro-batch")

    def recorded(self, outcomes: list[JobResult | JobError], written: bool) -> None:
        raise AssertionError("this test runs no micro-batch")
