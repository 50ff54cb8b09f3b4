"""The final-state writers: the only code that ends a job.

- `finish_batch`: a worker's micro-batch, success or failure, in one pipeline;
- `finalize_unrun`: a job canceled or expired before it ran (the API on DELETE or on reading a
  job past its deadline, the feeder);
- `fail_poison`: a job that was running when its worker died MAX_JOB_ATTEMPTS times (the janitor).

Each writes rq's status, registry and results-stream entry (what the API waits on) and bumps the
job's OpenAI batch counter, if it has one. `finish_batch` writes what rq's own
`Worker.handle_job_success` / `handle_job_failure` write for our jobs, minus what is listed in
`LEFT_OUT`; tests/shared/test_finish_parity.py holds it to that, field for field.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis as SyncRedis
from rq.executions import Execution
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.registry import CanceledJobRegistry, FailedJobRegistry
from rq.results import Result
from rq.utils import now, utcformat
from rq.worker import SimpleWorker

from shared import keys
from shared.contract import CANCELED, JobError, JobResult, batch_counter, encode, encode_error
from shared.queue import jobs
from shared.serializer import MsgpackSerializer

log = logging.getLogger("omega.queue.finish")

# What rq's success/failure handling does that `finish_batch` deliberately does not, and why.
LEFT_OUT: dict[str, str] = {
    "dependents": "our jobs never have dependents: no WATCH on the dependents key, nothing to enqueue",
    "repeats": "our jobs never repeat: no Repeat.schedule",
    "retries": "rq's Retry is never set on our jobs (the janitor re-runs crashed jobs instead)",
    "job re-save": "on success only `status` and `ended_at` change; rq re-writes every field "
    "(payload and all) with Job.save (on failure rq's failed registry re-saves it, and so do we)",
    "callbacks, webhooks, rate-limit slot": "none are ever configured for our jobs",
}


@dataclass
class StartedJob:
    """A job of a micro-batch that rq's bookkeeping has started (it has an execution record)."""

    job: Job
    execution: Execution

    @property
    def id(self) -> str:
        return str(self.job.id)


# KEYS: the batch record, its set of counted job ids. ARGV: job id, counter, the set's TTL.
COUNT_ONCE_LUA = """
local added = redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if added == 1 then redis.call('HINCRBY', KEYS[1], ARGV[2], 1) end
return added
"""
COUNTED_TTL_S = 7 * 86400  # refreshed by every count; the batch's cleanup shortens it


def _count_in_batch(pipe: Any, job: Job, outcome: JobResult | JobError) -> None:
    """Bump the job's OpenAI batch counter, once per job id however often it ends."""
    batch_id = jobs.batch_of(job)
    if batch_id is not None:
        record, counted = keys.batch_record(batch_id), keys.batch_counted(batch_id)
        pipe.eval(COUNT_ONCE_LUA, 2, record, counted, job.id, batch_counter(outcome), COUNTED_TTL_S)


def _mark_ended(pipe: Any, job: Job, status: RqStatus, ended: datetime) -> None:
    """Only a job's status and end time change when it ends: write those two fields, not the
    whole job (payload and all) as rq's Job.save would."""
    job._status = status
    job.ended_at = ended
    pipe.hset(job.key, mapping={"status": status.value, "ended_at": utcformat(ended)})


def finish_batch(worker: SimpleWorker, done: Sequence[tuple[StartedJob, JobResult | JobError]]) -> None:
    """End every job of a micro-batch in one pipeline: status, result on the job's results
    stream, finished or failed registry, execution cleanup, the worker's counters; plus our
    batch counters and cancel-request cleanup."""
    with worker.connection.pipeline() as pipe:
        finish_commands(pipe, worker, done)
        pipe.execute()


def finish_commands(pipe: Any, worker: SimpleWorker, done: Sequence[tuple[StartedJob, JobResult | JobError]]) -> None:
    """`finish_batch`'s writes, queued on `pipe` (the continuous worker sends them with a step's
    starts in one round trip)."""
    ended = now()
    for started, outcome in done:
        job, execution = started.job, started.execution
        started_at = job.started_at or ended
        if isinstance(outcome, JobResult):
            result_ttl = job.get_result_ttl(worker.default_result_ttl)
            _mark_ended(pipe, job, RqStatus.FINISHED, ended)
            Result.create(
                job,
                Result.Type.SUCCESSFUL,
                result_ttl,
                return_value=encode(outcome),
                worker_name=worker.name,
                pipeline=pipe,
                execution_id=execution.id,
                execution_started_at=execution.created_at,
                execution_ended_at=ended,
            )
            if result_ttl != 0:
                job.finished_job_registry.add(job, result_ttl, pipe)
            job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
            worker.increment_successful_job_count(pipeline=pipe)
        else:
            _mark_ended(pipe, job, RqStatus.FAILED, ended)
            job._handle_failure(
                encode_error(outcome),
                pipeline=pipe,
                worker_name=worker.name,
                execution_id=execution.id,
                execution_started_at=execution.created_at,
                execution_ended_at=ended,
            )
            worker.increment_failed_job_count(pipeline=pipe)
        worker.increment_total_working_time(ended - started_at, pipe)
        worker.cleanup_execution(job, pipeline=pipe, execution=execution)
        pipe.zrem(keys.CANCEL_REQUESTS, job.id)
        _count_in_batch(pipe, job, outcome)


def finalize_unrun(redis: SyncRedis, job_id: str, error: JobError, default_ttl_s: int) -> None:
    """Final state for a job that never ran (canceled or expired): status, registry and a
    results-stream entry; the job expires with its result."""
    job = jobs.fetch(redis, job_id)
    if job is None:
        return
    ttl = job.failure_ttl or default_ttl_s
    canceled = error.code == CANCELED
    with redis.pipeline() as pipe:
        _count_in_batch(pipe, job, error)
        job.set_status(RqStatus.CANCELED if canceled else RqStatus.FAILED, pipeline=pipe)
        if job.origin:
            registry = CanceledJobRegistry if canceled else FailedJobRegistry
            registry(job.origin, connection=redis, serializer=MsgpackSerializer).add(job, ttl, pipeline=pipe)
        Result.create(
            job,
            Result.Type.STOPPED if canceled else Result.Type.FAILED,
            ttl,
            exc_string=encode_error(error),
            pipeline=pipe,
        )
        pipe.expire(job.key, ttl)
        pipe.execute()


def poison_error(job_id: str, attempts: int) -> JobError:
    return JobError(
        status=500,
        type="server_error",
        code="worker_crashed",
        message=f"job {job_id} was running when its worker died, {attempts} times: it is not retried "
        "again (MAX_JOB_ATTEMPTS)",
    )


def fail_poison(redis: SyncRedis, job: Job, attempts: int, default_ttl_s: int) -> None:
    """Fail a job that was running when its worker died `attempts` times (a poison request)."""
    error = poison_error(job.id, attempts)
    ttl = job.failure_ttl or default_ttl_s
    with redis.pipeline() as pipe:
        job.set_status(RqStatus.FAILED, pipeline=pipe)
        FailedJobRegistry(job.origin, connection=redis, serializer=MsgpackSerializer).add(
            job, ttl, exc_string=encode_error(error), pipeline=pipe
        )
        Result.create_failure(job, ttl, exc_string=encode_error(error), pipeline=pipe)
        _count_in_batch(pipe, job, error)
        pipe.execute()
    log.warning("job %s failed: %s", job.id, error.message)
