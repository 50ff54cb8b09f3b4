"""A worker whose loop was interrupted puts back the jobs it had started but never ran (their
start reached Redis, its reply did not); jobs started by other workers stay for the janitor."""

from __future__ import annotations

from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from shared.queue.resume import requeue_own_started
from shared.serializer import MsgpackSerializer
from tests.shared.test_finish_parity import QUEUE, fresh, start
from tests.support.procs import RedisServer


def test_own_started_jobs_go_back_to_the_front_of_the_queue(redis_server: RedisServer) -> None:
    conn = fresh(redis_server)
    _, queue, _ = start(conn, "other-worker", "theirs")
    worker, _, _ = start(conn, "this-worker", "ours")
    queue.enqueue_call(func="x", args=(b"",), job_id="waiting")
    assert requeue_own_started(worker) == 1
    assert queue.get_job_ids() == ["ours", "waiting"]
    assert Job.fetch("ours", connection=conn, serializer=MsgpackSerializer).get_status() == JobStatus.QUEUED
    started = StartedJobRegistry(QUEUE, connection=conn, serializer=MsgpackSerializer)
    assert [job_id for job_id, _ in started.get_job_and_execution_ids(cleanup=False)] == ["theirs"]
    assert requeue_own_started(worker) == 0
