"""Finish batch-lane jobs by hand, as a worker would (rq's start bookkeeping, then finish_batch)."""

from __future__ import annotations

import uuid

from redis import Redis
from rq.job import Job
from rq.queue import Queue

from shared import keys
from shared.contract import JobError, JobResult
from shared.queue import jobs
from shared.queue.finish import finish_batch
from shared.queue.worker import MicroBatchWorker
from shared.serializer import MsgpackSerializer
from tests.support.queue import NeverRuns

QUEUE = "omega.by-hand"
RESULT = JobResult(text="done", finish_reason="stop", prompt_tokens=3, completion_tokens=1, worker="by-hand")


def finish_lane_jobs(conn: Redis, count: int, outcome: JobResult | JobError = RESULT) -> list[str]:
    """Take up to `count` jobs off the batch lane and end them with `outcome`; their ids."""
    queue = Queue(QUEUE, connection=conn, serializer=MsgpackSerializer)
    worker = MicroBatchWorker(
        [queue],
        connection=conn,
        name=f"by-hand-{uuid.uuid4().hex[:8]}",
        handler=NeverRuns(),
        max_batch_size=1,
        batch_timeout_ms=0,
    )
    worker.register_birth()
    done = []
    for _ in range(count):
        raw = conn.lpop(keys.BATCH_LANE)
        if raw is None:
            break
        job_id = raw.decode()
        job = jobs.fetch(conn, job_id)
        assert job is not None
        jobs.enqueue_on(conn, QUEUE, job)
        conn.lrem(queue.key, 1, job_id)
        job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
        with conn.pipeline() as pipe:
            [started] = worker._start_commands([job], queue, pipe)
            pipe.execute()
        started.job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
        finish_batch(worker, [(started, outcome)])
        done.append(job_id)
    worker.register_death()
    return done
