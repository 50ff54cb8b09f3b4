"""A job's status as clients see it, from rq's status and its latest outcome (pure rule)."""

from __future__ import annotations

import time

import pytest
from rq.job import JobStatus

from shared.contract import CANCELED, EXPIRED, JobError, JobMeta, JobResult

# --- the module under test (moves with the jobs slice) ----------------------------------------
from shared.contract import FINAL_JOB_STATUSES as FINAL
from shared.queue.outcomes import JobSnapshot

RESULT = JobResult(text="hi", finish_reason="stop", prompt_tokens=3, completion_tokens=1)


def error(code: str | None) -> JobError:
    return JobError(status=500, type="server_error", message="m", code=code)


def snapshot(rq_status: JobStatus | None, outcome: object = None, expires_at: float | None = None) -> JobSnapshot:
    meta = JobMeta(model="model", created_at=time.time(), expires_at=expires_at)
    status = rq_status.value if rq_status is not None else None
    return JobSnapshot("j", status, meta, "omega.w", None, None, outcome, "0-0")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rq_status", "outcome", "status"),
    [
        pytest.param(JobStatus.QUEUED, None, "queued", id="queued"),
        pytest.param(None, None, "queued", id="in-the-lane"),
        pytest.param(JobStatus.DEFERRED, None, "queued", id="deferred"),
        pytest.param(JobStatus.STARTED, None, "running", id="started"),
        pytest.param(JobStatus.FAILED, None, "failed", id="failed-without-outcome"),
        pytest.param(JobStatus.CANCELED, None, "canceled", id="canceled"),
        pytest.param(JobStatus.STOPPED, None, "canceled", id="stopped"),
        # The outcome wins over rq's status: it is written last and is what a waiter sees.
        pytest.param(JobStatus.STARTED, RESULT, "succeeded", id="result"),
        pytest.param(JobStatus.FINISHED, RESULT, "succeeded", id="finished"),
        pytest.param(JobStatus.FAILED, error("worker_crashed"), "failed", id="error"),
        pytest.param(JobStatus.FAILED, error(None), "failed", id="error-without-code"),
        pytest.param(JobStatus.CANCELED, error(CANCELED), "canceled", id="canceled-outcome"),
        pytest.param(JobStatus.STARTED, error(CANCELED), "canceled", id="stopped-while-running"),
        pytest.param(JobStatus.FAILED, error(EXPIRED), "expired", id="expired"),
    ],
)
def test_status(rq_status: JobStatus | None, outcome: object, status: str) -> None:
    snap = snapshot(rq_status, outcome)
    assert snap.status == status
    assert snap.final == (status in FINAL)


def test_only_a_queued_job_can_be_past_its_deadline() -> None:
    past, future = time.time() - 1, time.time() + 60
    assert snapshot(JobStatus.QUEUED, expires_at=past).past_deadline
    assert snapshot(None, expires_at=past).past_deadline  # waiting in the batch lane
    assert not snapshot(JobStatus.QUEUED, expires_at=future).past_deadline
    assert not snapshot(JobStatus.QUEUED).past_deadline  # no deadline
    assert not snapshot(JobStatus.STARTED, expires_at=past).past_deadline  # running: it finishes
    assert not snapshot(JobStatus.FINISHED, RESULT, expires_at=past).past_deadline
