"""The finish path of shared/queue (finish_batch) against rq's own, on a real Redis.

Two identical jobs are started the same way; rq's `Worker.handle_job_success` /
`handle_job_failure` end one, `finish_batch` the other. What lands in Redis (job hash and its
expiry, results-stream entry, registries, execution record, worker counters) must agree field
for field, except what names the job or its moment, and what `finish.LEFT_OUT` documents."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.utils import now

from shared import keys
from shared.contract import JobError, JobResult, encode, encode_error
from shared.queue import finish, names
from shared.queue.finish import StartedJob, finish_batch
from shared.queue.outcomes import latest_outcome
from shared.queue.worker import MicroBatchWorker
from shared.serializer import MsgpackSerializer
from tests.support.procs import RedisServer
from tests.support.queue import NeverRuns

DB = 11
QUEUE = "omega.parity"
RESULT = JobResult(text="hi", finish_reason="stop", prompt_tokens=3, completion_tokens=1, worker="w")
ERROR = JobError(status=400, type="invalid_request_error", message="bad image", param="messages", code="bad_image")
# Values that name the job, its execution or its moment: they differ between any two jobs.
MOMENTS = {"created_at", "enqueued_at", "started_at", "ended_at", "last_heartbeat"}


def fresh(redis_server: RedisServer) -> Redis:
    conn = redis_server.client(db=DB)
    conn.flushdb()
    return conn


def start(conn: Redis, name: str, job_id: str) -> tuple[MicroBatchWorker, Queue, StartedJob]:
    """A job enqueued by rq, pulled and started by a worker of its own (its own counters)."""
    queue = Queue(QUEUE, connection=conn, serializer=MsgpackSerializer)
    queue.enqueue_call(
        func=keys.JOB_FUNC,
        args=(b"same payload",),
        job_id=job_id,
        result_ttl=600,
        failure_ttl=700,
        meta={"model": "m", "created_at": 1.0},
    )
    worker = MicroBatchWorker(
        [queue], connection=conn, name=name, handler=NeverRuns(), max_batch_size=1, batch_timeout_ms=0
    )
    worker.register_birth()
    conn.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")
    job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
    with conn.pipeline() as pipe:
        [started] = worker._start_commands([job], queue, pipe)
        pipe.execute()
    started.job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)  # as stored once started
    return worker, queue, started


Meanwhile = Callable[[str], None]


def rq_finishes(conn: Redis, outcome: JobResult | JobError, meanwhile: Meanwhile = lambda _: None) -> None:
    worker, queue, started = start(conn, "theirs-worker", "theirs")
    meanwhile("theirs")
    job = started.job
    job.ended_at = now()
    registry = StartedJobRegistry(QUEUE, connection=conn, serializer=MsgpackSerializer)
    if isinstance(outcome, JobResult):
        job._result = encode(outcome)
        worker.handle_job_success(job, queue, registry, started.execution)
    else:
        worker.handle_job_failure(job, queue, registry, exc_string=encode_error(outcome), execution=started.execution)


def we_finish(conn: Redis, outcome: JobResult | JobError, meanwhile: Meanwhile = lambda _: None) -> None:
    worker, _, started = start(conn, "ours-worker", "ours")
    meanwhile("ours")
    finish_batch(worker, [(started, outcome)])


def text_hash(conn: Redis, key: str) -> dict[str, bytes]:
    return {k.decode(): v for k, v in conn.hgetall(key).items()}


def result_entries(conn: Redis, job_id: str) -> list[dict[str, bytes]]:
    return [{k.decode(): v for k, v in fields.items()} for _, fields in conn.xrange(names.results_key(job_id))]


def compare(conn: Redis, outcome: JobResult | JobError) -> dict[str, Any]:
    """Finish both jobs; assert everything agrees but the named exceptions; return both job hashes."""
    rq_finishes(conn, outcome)
    we_finish(conn, outcome)

    # The job hash: same fields; only what names the job's moment differs.
    theirs, ours = text_hash(conn, names.job_key("theirs")), text_hash(conn, names.job_key("ours"))
    assert set(ours) == set(theirs)
    differing = {k for k in ours if ours[k] != theirs[k]}
    assert differing <= MOMENTS | {"worker_name"}, differing
    assert ours["worker_name"] == b"ours-worker" and ours["status"] == theirs["status"]
    # Same expiry: the job lives as long as its result.
    assert abs(conn.ttl(names.job_key("ours")) - conn.ttl(names.job_key("theirs"))) <= 1

    # The results stream: one entry each, the same fields and values but ids and moments.
    [their_entry], [our_entry] = result_entries(conn, "theirs"), result_entries(conn, "ours")
    assert set(our_entry) == set(their_entry)
    differing = {k for k in our_entry if our_entry[k] != their_entry[k]}
    assert differing <= {"created_at", "execution_id", "execution_started_at", "execution_ended_at", "worker_name"}
    assert our_entry["worker_name"] == b"ours-worker" and their_entry["worker_name"] == b"theirs-worker"
    assert abs(conn.ttl(names.results_key("ours")) - conn.ttl(names.results_key("theirs"))) <= 1

    # Registries: out of started, into finished or failed with the same expiry; no execution left.
    for registry_class in (StartedJobRegistry, FinishedJobRegistry, FailedJobRegistry):
        registry = registry_class(QUEUE, connection=conn, serializer=MsgpackSerializer)
        members = {m.decode().split(":")[0]: s for m, s in conn.zrange(registry.key, 0, -1, withscores=True)}
        assert ("ours" in members) == ("theirs" in members), registry_class.__name__
        if "ours" in members:
            assert abs(members["ours"] - members["theirs"]) <= 2
    assert not conn.keys("rq:execution:*") and not conn.keys("rq:executions:*")

    # The worker's counters.
    counters = {"successful_job_count", "failed_job_count"}
    their_worker = text_hash(conn, "rq:worker:theirs-worker")
    our_worker = text_hash(conn, "rq:worker:ours-worker")
    assert {k: their_worker.get(k) for k in counters} == {k: our_worker.get(k) for k in counters}
    assert float(our_worker["total_working_time"]) >= 0 and "total_working_time" in their_worker
    return {"theirs": theirs, "ours": ours}


def test_success_lands_as_rq_would_write_it(redis_server: RedisServer) -> None:
    conn = fresh(redis_server)
    hashes = compare(conn, RESULT)
    assert hashes["ours"]["status"] == b"finished" and hashes["ours"]["ended_at"]
    assert latest_outcome(conn, "ours")[0] == RESULT == latest_outcome(conn, "theirs")[0]
    assert FinishedJobRegistry(QUEUE, connection=conn).get_job_ids() != []


def test_failure_lands_as_rq_would_write_it(redis_server: RedisServer) -> None:
    conn = fresh(redis_server)
    hashes = compare(conn, ERROR)
    assert hashes["ours"]["status"] == b"failed"
    assert hashes["ours"]["ended_at"] and hashes["theirs"]["ended_at"]
    assert latest_outcome(conn, "ours")[0] == ERROR == latest_outcome(conn, "theirs")[0]


def test_our_additions_batch_counter_and_cancel_request(redis_server: RedisServer) -> None:
    """What finish_batch writes beyond rq: the OpenAI batch's counter and the cancel-set cleanup."""
    conn = fresh(redis_server)
    worker, _, started = start(conn, "ours-worker", "ours")
    started.job.meta["batch_id"] = "batch_x"
    conn.zadd(keys.CANCEL_REQUESTS, {"ours": time.time()})
    finish_batch(worker, [(started, ERROR)])
    assert conn.hget(keys.batch_record("batch_x"), "failed") == b"1"
    assert conn.zscore(keys.CANCEL_REQUESTS, "ours") is None



def test_a_job_that_ends_twice_counts_once_in_its_batch(redis_server: RedisServer) -> None:
    """At least once (a re-run after a Redis failover): a second finish of the same job adds a
    second results-stream entry, but the batch counter counts the job once."""
    conn = fresh(redis_server)
    worker, _, started = start(conn, "ours-worker", "ours")
    started.job.meta["batch_id"] = "batch_x"
    finish_batch(worker, [(started, RESULT)])
    finish_batch(worker, [(started, RESULT)])
    assert conn.hget(keys.batch_record("batch_x"), "completed") == b"1"
    assert len(result_entries(conn, "ours")) == 2
    assert latest_outcome(conn, "ours")[0] == RESULT
    assert conn.ttl(keys.batch_counted("batch_x")) > 0


def test_what_is_left_out_is_documented_and_real(redis_server: RedisServer) -> None:
    """`LEFT_OUT` lists what rq does and finish_batch does not; the job re-save on success is
    observable: rq re-writes every field of the job, finish_batch only its status and end time."""
    assert set(finish.LEFT_OUT) == {
        "dependents",
        "repeats",
        "retries",
        "job re-save",
        "callbacks, webhooks, rate-limit slot",
    }
    conn = fresh(redis_server)

    def touch(job_id: str) -> None:  # another writer changes a field while the job runs
        conn.hset(names.job_key(job_id), "description", "changed meanwhile")

    rq_finishes(conn, RESULT, touch)
    we_finish(conn, RESULT, touch)
    assert conn.hget(names.job_key("theirs"), "description") != b"changed meanwhile"  # rq re-saved the job
    assert conn.hget(names.job_key("ours"), "description") == b"changed meanwhile"  # we did not
