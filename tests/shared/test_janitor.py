"""The janitor's sweep on a seeded fleet (real redis-server, no worker processes).

A dead worker is one without a fresh heartbeat record; its queue still holds waiting, pulled
and started jobs. One sweep must leave none of them with it."""

from __future__ import annotations

import time

from redis import Redis
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from shared import keys
from shared.contract import expired_error
from shared.fleet import ModelCard, WorkerInfo, encode_info
from shared.queue import names
from shared.queue.finish import poison_error
from shared.queue.janitor import LOCK, MOVING, Janitor
from shared.queue.outcomes import latest_outcome
from shared.queue.worker import MicroBatchWorker
from shared.serializer import MsgpackSerializer
from shared.settings_sources import load_settings
from tests.support.procs import RedisServer
from tests.support.queue import NeverRuns

DB = 10
CARD = ModelCard(path=None, demo=True, dtype="torch.float32", attn="sdpa", chat_template="")
SETTINGS = load_settings(environ={"MAX_JOB_ATTEMPTS": "2"})


def alive(conn: Redis, name: str, state: str = "ready") -> WorkerInfo:
    """A worker's heartbeat record, as a live worker writes it."""
    info = WorkerInfo(
        id=name,
        queue=f"omega.{name}",
        host="h",
        pid=1,
        device="cpu",
        device_name="cpu",
        capacity=4,
        state=state,  # type: ignore[arg-type]
        started_at=time.time(),
        heartbeat_at=time.time(),
        model=CARD,
    )
    conn.set(keys.worker_info(name), encode_info(info))
    conn.zadd(keys.WORKERS, {name: time.time()})
    return info


def enqueue(conn: Redis, queue_name: str, job_id: str, **meta: object) -> Job:
    queue = Queue(queue_name, connection=conn, serializer=MsgpackSerializer)
    return queue.enqueue_call(func=keys.JOB_FUNC, args=(b"payload",), job_id=job_id, meta=dict(meta) or None)


def start_on_dead_worker(conn: Redis, job: Job) -> None:
    """What a worker that then died did: pulled the job and started it (rq's bookkeeping)."""
    queue = Queue("omega.dead", connection=conn, serializer=MsgpackSerializer)
    worker = MicroBatchWorker(
        [queue], connection=conn, name="dead.1", handler=NeverRuns(), max_batch_size=1, batch_timeout_ms=0
    )
    conn.lrem(queue.key, 1, job.id)
    with conn.pipeline() as pipe:
        worker._start_commands([job], queue, pipe)
        pipe.execute()


def seeded(redis_server: RedisServer) -> Redis:
    conn = redis_server.client(db=DB)
    conn.flushdb()
    alive(conn, "live")
    for i in range(3):
        enqueue(conn, "omega.dead", f"waiting-{i}")
    start_on_dead_worker(conn, enqueue(conn, "omega.dead", "running"))
    start_on_dead_worker(conn, enqueue(conn, "omega.dead", "poison", attempts=1, batch_id="batch_p"))
    # Pulled (moved to the intermediate list) but never started before the worker died.
    enqueue(conn, "omega.dead", "pulled")
    conn.lmove(names.queue_key("omega.dead"), names.intermediate_key("omega.dead"), "RIGHT", "RIGHT")
    return conn


def status(conn: Redis, job_id: str) -> JobStatus:
    return Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer).get_status()


def test_a_dead_workers_jobs_move_to_a_live_queue(redis_server: RedisServer) -> None:
    conn = seeded(redis_server)
    report = Janitor(conn, SETTINGS).sweep()

    assert (report.moved, report.requeued, report.failed) == (4, 1, 1)
    assert conn.llen(names.queue_key("omega.dead")) == 0 and conn.llen(names.intermediate_key("omega.dead")) == 0
    assert StartedJobRegistry("omega.dead", connection=conn).get_job_ids(cleanup=False) == []
    live = [i.decode() for i in conn.lrange(names.queue_key("omega.live"), 0, -1)]
    # Moved jobs go to the front (they waited long enough); every one of them exactly once.
    assert sorted(live) == sorted(["waiting-0", "waiting-1", "waiting-2", "running", "pulled"])
    for job_id in live:
        job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
        assert job.get_status() == JobStatus.QUEUED and job.origin == "omega.live"
    assert not conn.llen(MOVING) and not conn.exists(LOCK)


def test_a_started_job_goes_back_with_one_more_attempt(redis_server: RedisServer) -> None:
    conn = seeded(redis_server)
    Janitor(conn, SETTINGS).sweep()
    running = Job.fetch("running", connection=conn, serializer=MsgpackSerializer)
    assert running.meta["attempts"] == 1  # runs alone next time (shared/queue/worker.py)
    assert Job.fetch("waiting-0", connection=conn, serializer=MsgpackSerializer).meta.get("attempts", 0) == 0


def test_at_max_job_attempts_it_fails_as_worker_crashed(redis_server: RedisServer) -> None:
    conn = seeded(redis_server)
    Janitor(conn, SETTINGS).sweep()
    assert status(conn, "poison") == JobStatus.FAILED
    assert "poison" in FailedJobRegistry("omega.dead", connection=conn).get_job_ids()
    outcome, _ = latest_outcome(conn, "poison")
    assert outcome == poison_error("poison", 2) and outcome.code == "worker_crashed"
    assert conn.hget(keys.batch_record("batch_p"), "failed") == b"1"  # its OpenAI batch counts it
    assert conn.lpos(names.queue_key("omega.live"), "poison") is None


def test_nothing_moves_without_a_live_target_or_without_the_lock(redis_server: RedisServer) -> None:
    conn = seeded(redis_server)
    conn.set(LOCK, "another sweeper's token")
    assert Janitor(conn, SETTINGS).sweep().moved == 0  # one sweep at a time, fleet-wide
    assert conn.get(LOCK) == b"another sweeper's token"  # and never released by someone else
    conn.delete(LOCK)
    alive(conn, "live", state="stopping")  # draining: takes nothing new
    assert Janitor(conn, SETTINGS).sweep().moved == 0
    assert conn.llen(names.queue_key("omega.dead")) == 3 and status(conn, "running") == JobStatus.STARTED


# --- retiring the queues of workers gone for good (DEAD_QUEUE_RETIRE_S) -------------------------
RETIRING = load_settings(environ={"MAX_JOB_ATTEMPTS": "2", "DEAD_QUEUE_RETIRE_S": "300"})


def queue_set(conn: Redis) -> set[str]:
    return {names.queue_name(k.decode()) for k in conn.smembers(names.QUEUES)}


def test_a_queue_gone_past_dead_queue_retire_s_is_emptied_then_retired(redis_server: RedisServer) -> None:
    conn = seeded(redis_server)
    conn.zadd(keys.WORKERS, {"dead": time.time() - 301})  # its last heartbeat: 301 s ago
    FinishedJobRegistry("omega.dead", connection=conn).add(enqueue(conn, "not-ours", "done"), -1)
    report = Janitor(conn, RETIRING).sweep()

    assert (report.moved, report.requeued, report.retired) == (4, 1, 1)  # its jobs first, then the queue
    assert "omega.dead" not in queue_set(conn) and "omega.live" in queue_set(conn)
    assert conn.zscore(keys.WORKERS, "dead") is None  # gone from the fleet's heartbeat set too
    assert not conn.exists("rq:finished:omega.dead"), "the retired queue's registries were left behind"
    assert Janitor(conn, RETIRING).sweep().retired == 0  # once


def test_a_queue_gone_for_less_stays_and_a_queue_with_jobs_stays_without_a_live_worker(
    redis_server: RedisServer,
) -> None:
    conn = seeded(redis_server)
    conn.zadd(keys.WORKERS, {"dead": time.time() - 200})
    assert Janitor(conn, RETIRING).sweep().retired == 0
    assert "omega.dead" in queue_set(conn)
    # Nobody live at all (scaled to zero): an empty gone queue is retired, one holding jobs is not.
    conn.delete(keys.worker_info("live"), names.queue_key("omega.live"))  # it served its jobs, then left
    conn.zadd(keys.WORKERS, {"live": time.time() - 400, "dead": time.time() - 400})
    enqueue(conn, "omega.dead", "stranded")
    report = Janitor(conn, RETIRING).sweep()
    assert report.retired == 1 and queue_set(conn) == {"omega.dead"}
    assert conn.lrange(names.queue_key("omega.dead"), 0, -1) == [b"stranded"]


def test_a_queue_whose_worker_left_no_heartbeat_is_dated_from_the_first_sweep(redis_server: RedisServer) -> None:
    conn = redis_server.client(db=DB)
    conn.flushdb()
    enqueue(conn, "omega.left", "j")
    conn.delete(names.queue_key("omega.left"))  # emptied; its worker left cleanly (no heartbeat entry)
    settings = load_settings(environ={"DEAD_QUEUE_RETIRE_S": "0.5"})
    janitor = Janitor(conn, settings)
    assert janitor.sweep().retired == 0 and "omega.left" in queue_set(conn)
    time.sleep(0.6)
    assert janitor.sweep().retired == 1 and queue_set(conn) == set()


def test_a_job_awaiting_a_worker_past_its_deadline_ends_expired_without_any_worker(
    redis_server: RedisServer,
) -> None:
    conn = redis_server.client(db=DB)
    conn.flushdb()
    now = time.time()
    for job_id, meta in {
        "late": {"model": "m", "created_at": now - 5, "expires_at": now - 1},
        "too-long": {"model": "m", "created_at": now - 61},  # past NO_WORKER_WAIT_S
        "fresh": {"model": "m", "created_at": now, "expires_at": now + 60},
    }.items():
        Job.create(
            keys.JOB_FUNC, args=(b"p",), id=job_id, connection=conn, serializer=MsgpackSerializer, meta=meta
        ).save()
        conn.rpush(keys.AWAITING_WORKER, job_id)
    report = Janitor(conn, load_settings(environ={"NO_WORKER_WAIT_S": "60"})).sweep()
    assert report.expired == 2
    assert conn.lrange(keys.AWAITING_WORKER, 0, -1) == [b"fresh"]
    for job_id in ("late", "too-long"):
        outcome, _ = latest_outcome(conn, job_id)
        assert outcome == expired_error(job_id)
