"""The janitor's sweep on a seeded fleet (real Redis): jobs of a dead worker go to live queues,
abandoned runs are retried up to MAX_JOB_ATTEMPTS, and nothing of a live worker is touched."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from redis import Redis
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.results import Result

from shared import keys
from shared.contract import decode_error
from shared.fleet import ModelCard, WorkerInfo, encode_info

# --- the module under test (moves into the queue adapter) -------------------------------------
from shared.queue import names
from shared.queue.janitor import LOCK, Janitor, SweepReport
from shared.queue.jobs import ATTEMPTS
from shared.serializer import MsgpackSerializer
from shared.settings import Settings
from shared.settings_sources import load_settings
from tests.support.procs import RedisServer

DB = 11  # the e2e stacks count up from db 0; tests/support/inproc.py uses 10, tests/workers 12-15
CARD = ModelCard(path=None, demo=True, dtype="torch.float32", attn="sdpa", chat_template="")


@pytest.fixture
def conn(redis_server: RedisServer) -> Iterator[Redis]:
    client = redis_server.client(DB)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return load_settings(environ={"REDIS_URL": redis_server.url(DB), "WORKER_TTL_S": "3", "MAX_JOB_ATTEMPTS": "3"})


def join(conn: Redis, name: str, state: str = "ready", capacity: int = 4) -> WorkerInfo:
    """A worker's heartbeat record, as workers/fleet_member.py writes it."""
    now = time.time()
    info = WorkerInfo(
        id=name,
        queue=keys.worker_queue(name),
        host="h",
        pid=1,
        device="cpu",
        device_name="cpu",
        capacity=capacity,
        state=state,  # type: ignore[arg-type]
        started_at=now,
        heartbeat_at=now,
        model=CARD,
    )
    conn.set(keys.worker_info(name), encode_info(info), px=3000)
    conn.zadd(keys.WORKERS, {name: now})
    return info


def queued(conn: Redis, worker: WorkerInfo, job_id: str, **meta: object) -> Job:
    queue = Queue(worker.queue, connection=conn, serializer=MsgpackSerializer)
    return queue.enqueue_call(func=keys.JOB_FUNC, args=(b"payload",), job_id=job_id, meta=dict(meta))


def started(conn: Redis, worker: WorkerInfo, job_id: str, **meta: object) -> Job:
    """A job the worker took and runs: off its queue, in its started registry, status started."""
    job = queued(conn, worker, job_id, **meta)
    conn.lrem(names.queue_key(worker.queue), 1, job_id)
    job.worker_name = worker.rq_name
    job.set_status(JobStatus.STARTED)
    job.save()
    conn.zadd(names.started_key(worker.queue), {f"{job_id}:exec-1": time.time() + 600})
    return job


def pulled(conn: Redis, worker: WorkerInfo, job_id: str) -> None:
    """A job the worker moved to its intermediate list and never recorded (it died in between)."""
    queued(conn, worker, job_id)
    queue = Queue(worker.queue, connection=conn)
    conn.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")


def waiting(conn: Redis, worker: WorkerInfo) -> list[str]:
    return [raw.decode() for raw in conn.lrange(names.queue_key(worker.queue), 0, -1)]


def fetch(conn: Redis, job_id: str) -> Job:
    return Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)


def test_sweep_moves_a_dead_workers_jobs_and_leaves_live_ones_alone(conn: Redis, settings: Settings) -> None:
    busy, idle = join(conn, "busy"), join(conn, "idle")
    dead = join(conn, "dead")
    conn.delete(keys.worker_info("dead"))  # its heartbeat record expired: it died
    queued(conn, busy, "busy-waiting")
    started(conn, busy, "busy-running")
    for i in range(3):
        queued(conn, dead, f"dead-waiting-{i}")
    started(conn, dead, "dead-running")
    started(conn, dead, "dead-poison", **{ATTEMPTS: 2})
    pulled(conn, dead, "dead-pulled")

    report = Janitor(conn, settings).sweep()

    assert report == SweepReport(moved=4, requeued=1, failed=1)
    assert waiting(conn, dead) == [] and conn.zcard(names.started_key(dead.queue)) == 0
    assert conn.llen(Queue(dead.queue, connection=conn).intermediate_queue_key) == 0
    moved = {f"dead-waiting-{i}" for i in range(3)} | {"dead-pulled", "dead-running"}
    assert set(waiting(conn, busy) + waiting(conn, idle)) == moved | {"busy-waiting"}
    # Each goes to the least-loaded queue (waiting + running): the two end up level.
    busy_load = len(waiting(conn, busy)) + 1  # and its running job
    assert abs(busy_load - len(waiting(conn, idle))) <= 1
    # The abandoned run goes again, counted; a job that killed its worker MAX_JOB_ATTEMPTS times fails.
    rerun = fetch(conn, "dead-running")
    assert rerun.get_status() == JobStatus.QUEUED and rerun.meta[ATTEMPTS] == 1
    poison = fetch(conn, "dead-poison")
    assert poison.get_status() == JobStatus.FAILED
    latest = Result.fetch_latest(poison, serializer=MsgpackSerializer)
    error = decode_error(latest.exc_string if latest is not None else "")
    assert error is not None and error.code == "worker_crashed"
    # The live worker's running job is its own business.
    assert fetch(conn, "busy-running").get_status() == JobStatus.STARTED
    assert conn.zcard(names.started_key(busy.queue)) == 1
    # Nothing is left to do, and the lock is released.
    assert Janitor(conn, settings).sweep() == SweepReport()
    assert not conn.exists(LOCK)


def test_a_draining_worker_keeps_its_runs_but_gets_no_new_work(conn: Redis, settings: Settings) -> None:
    live = join(conn, "live", capacity=1)
    draining = join(conn, "draining", state="stopping", capacity=64)
    started(conn, draining, "finishing")
    dead = join(conn, "dead")
    conn.delete(keys.worker_info("dead"))
    queued(conn, dead, "orphan")

    assert Janitor(conn, settings).sweep() == SweepReport(moved=1)
    assert waiting(conn, live) == ["orphan"] and waiting(conn, draining) == []
    assert fetch(conn, "finishing").get_status() == JobStatus.STARTED


def test_without_a_live_worker_nothing_moves(conn: Redis, settings: Settings) -> None:
    dead = join(conn, "dead")
    conn.delete(keys.worker_info("dead"))
    queued(conn, dead, "stays")
    assert Janitor(conn, settings).sweep() == SweepReport()
    assert waiting(conn, dead) == ["stays"]


def test_one_sweep_at_a_time(conn: Redis, settings: Settings) -> None:
    join(conn, "live")
    dead = join(conn, "dead")
    conn.delete(keys.worker_info("dead"))
    queued(conn, dead, "later")
    conn.set(LOCK, "another-api", px=5000)
    assert Janitor(conn, settings).sweep() == SweepReport()
    assert waiting(conn, dead) == ["later"]
