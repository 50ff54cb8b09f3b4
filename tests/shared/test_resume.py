"""A worker whose loop was interrupted puts back the jobs it had started but never ran (their
start reached Redis, its reply did not); jobs started by other workers stay for the janitor. A
worker whose loop rode out a failover does the same while it waits for its next job."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import StartedJobRegistry

from shared import keys
from shared.contract import JobError, JobResult
from shared.queue import worker as worker_module
from shared.queue.resume import requeue_own_started
from shared.queue.worker import MicroBatch, MicroBatchWorker
from shared.serializer import MsgpackSerializer
from tests.shared.test_finish_parity import QUEUE, RESULT, fresh, start
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


class Finishes:
    """A micro-batch handler that answers every job; on the first micro-batch, `meanwhile` runs."""

    def __init__(self, meanwhile: Callable[[], None]) -> None:
        self.meanwhile: Callable[[], None] | None = meanwhile
        self.ran: list[str] = []

    def run(self, batch: MicroBatch) -> list[JobResult | JobError]:
        if self.meanwhile is not None:
            self.meanwhile, meanwhile = None, self.meanwhile
            meanwhile()
        self.ran += [item.id for item in batch.jobs]
        return [RESULT for _ in batch.jobs]

    def failed(self, exc: Exception, job_id: str) -> JobError:
        raise AssertionError(f"job {job_id} failed: {exc}")

    def recorded(self, outcomes: list[JobResult | JobError], written: bool) -> None:
        assert written


def test_a_running_worker_runs_again_what_a_failover_left_in_flight_on_its_queue(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The promoted replica can show jobs pulled (intermediate list) or started under this worker's
    name whose finish it never got, while the worker, which rode out the failover inside its loop,
    holds none of them. Nothing else would run them (the janitor leaves a live worker's jobs
    alone): the worker's wait for its next job puts them back, without a restart of its loop."""
    monkeypatch.setattr(worker_module, "RECONCILE_EVERY_S", 0.0)  # at every wait, not every 5 s
    conn = fresh(redis_server)
    queue = Queue(QUEUE, connection=conn, serializer=MsgpackSerializer)
    for job_id in ("first", "pulled", "started"):
        queue.enqueue_call(func=keys.JOB_FUNC, args=(b"",), job_id=job_id, result_ttl=600, failure_ttl=600)

    def failover_residue() -> None:
        # The new primary's view, as the worker runs "first": "pulled" was moved to the
        # intermediate list and "started" started under this worker's name, then their
        # finishes were lost with the old primary.
        assert conn.lpop(queue.key) == b"pulled" and conn.lpop(queue.key) == b"started"
        conn.rpush(queue.intermediate_queue_key, "pulled", "started")
        job = Job.fetch("started", connection=conn, serializer=MsgpackSerializer)
        with conn.pipeline() as pipe:
            worker._start_commands([job], queue, pipe)
            pipe.execute()

    handler = Finishes(failover_residue)
    worker = MicroBatchWorker(
        [queue], connection=conn, name="resuming-worker", handler=handler, max_batch_size=1, batch_timeout_ms=0
    )
    worker.work(max_idle_time=2)  # not burst: the idle wait is what is under test

    assert sorted(handler.ran) == ["first", "pulled", "started"]
    for job_id in handler.ran:
        assert Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer).get_status() == JobStatus.FINISHED
    assert conn.llen(queue.intermediate_queue_key) == 0
    assert StartedJobRegistry(QUEUE, connection=conn, serializer=MsgpackSerializer).get_job_ids() == []
