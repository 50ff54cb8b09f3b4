"""Reading a job's outcome and state: the one reader of rq's results stream and job status.

Every final state appends an entry to the job's results stream (success, failure, and the
distinct error codes for canceled and expired), so the latest entry is the outcome and a
blocking XREAD on the stream is the wait.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.job import JobStatus as RqStatus
from rq.results import Result

from shared.contract import (
    FINAL_JOB_STATUSES,
    JobError,
    JobMeta,
    JobResult,
    JobStatus,
    decode_error,
    decode_result,
    outcome_status,
)
from shared.queue import jobs, names
from shared.redis_text import text
from shared.serializer import MsgpackSerializer

Outcome = JobResult | JobError
NO_ENTRY = "0-0"  # results-stream position before any entry


def parse_entry(job_id: str, entry_id: str, fields: dict[Any, Any]) -> Outcome | None:
    """A results-stream entry as our outcome; None for an entry that is not final (a retry)."""
    result = Result.restore(job_id, entry_id, fields, connection=None, serializer=MsgpackSerializer)
    if result.type == Result.Type.SUCCESSFUL:
        return decode_result(result.return_value)
    if result.type == Result.Type.RETRIED:
        return None
    error = decode_error(result.exc_string or "")
    return error or JobError(
        status=500, type="server_error", message=f"the job failed (job {job_id})", code="job_failed"
    )


def latest_outcome(redis: SyncRedis, job_id: str) -> tuple[Outcome | None, str]:
    """The job's latest outcome and its stream position ((None, NO_ENTRY) before any)."""
    latest = redis.xrevrange(names.results_key(job_id), "+", "-", count=1)
    if not latest:
        return None, NO_ENTRY
    entry_id, fields = latest[0]
    last_id = text(entry_id)
    return parse_entry(job_id, last_id, fields or {}), last_id


async def wait_outcome(
    redis: Redis, job_id: str, timeout_s: float, after: str = NO_ENTRY
) -> tuple[Outcome | None, str]:
    """The job's next final outcome after `after`, waiting up to `timeout_s` on one blocking
    XREAD at a time (never a sleep loop); (None, last id seen) on timeout. Rides out a Redis
    restart: the job is safe in it (append-only), so the wait goes on."""
    stream = names.results_key(job_id)
    deadline = time.monotonic() + timeout_s
    last_id = after
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, last_id
        try:
            # wait_for guards against a Redis that stops answering without closing the socket.
            reply: Any = await asyncio.wait_for(
                redis.xread({stream: last_id}, block=max(1, int(left * 1000))), left + 5
            )
        except (RedisConnectionError, RedisTimeoutError, TimeoutError):
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            continue
        for entry_id, fields in reply[0][1] if reply else []:
            last_id = text(entry_id)
            outcome = parse_entry(job_id, last_id, fields)
            if outcome is not None:
                return outcome, last_id


@dataclass(frozen=True)
class JobSnapshot:
    """One job's state as read at one moment: rq's status, our meta, the latest outcome."""

    id: str
    rq_status: str | None
    meta: JobMeta
    origin: str | None  # the worker queue once enqueued; None while in the batch lane
    started_at: float | None
    ended_at: float | None
    outcome: Outcome | None
    last_result_id: str  # results-stream position: wait for entries after this one

    @property
    def status(self) -> JobStatus:
        if self.outcome is not None:
            return outcome_status(self.outcome)
        if self.rq_status in (RqStatus.CANCELED, RqStatus.STOPPED):
            return "canceled"
        if self.rq_status == RqStatus.STARTED:
            return "running"
        if self.rq_status == RqStatus.FAILED:
            return "failed"
        return "queued"

    @property
    def final(self) -> bool:
        return self.status in FINAL_JOB_STATUSES

    @property
    def past_deadline(self) -> bool:
        return self.status == "queued" and self.meta.expires_at is not None and time.time() > self.meta.expires_at


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def read_snapshot(redis: SyncRedis, job_id: str, default_model: str) -> JobSnapshot | None:
    """The job's snapshot, or None if it does not exist. A job whose meta is not ours (written by
    another tool) gets a minimal meta naming `default_model`."""
    job = jobs.fetch(redis, job_id)
    if job is None:
        return None
    outcome, last_id = latest_outcome(redis, job_id)
    try:
        meta = jobs.meta_of(job)
    except (msgspec.ValidationError, TypeError):
        meta = JobMeta(model=default_model, created_at=_ts(job.created_at) or time.time())
    status = job.get_status(refresh=False)
    return JobSnapshot(
        job_id,
        status.value if status is not None else None,
        meta,
        job.origin or None,
        _ts(job.started_at),
        _ts(job.ended_at),
        outcome,
        last_id,
    )
