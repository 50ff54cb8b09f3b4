"""Choosing a queue and enqueueing in one Lua script (shared/queue/admission.py), on a real Redis.

The jobs it writes must be exactly what rq's own enqueue writes, or workers, registries and rq's
tooling would disagree about them; and it must route as the fleet rules say."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from rq.job import Job, JobStatus
from rq.queue import Queue

from api.dispatch.dispatcher import Dispatcher
from shared.contract import JobMeta, JobPayload, Message, SamplingParams, TextPart
from shared.fleet import ModelCard, WorkerInfo
from shared.queue import names
from shared.queue.admission import Admission, Admitter
from shared.queue.fleet import read_loads
from shared.serializer import MsgpackSerializer
from shared.settings_sources import load_settings
from tests.support.procs import RedisServer

DB = 14  # the e2e stacks count up from db 0
CARD = ModelCard(path=None, demo=True, dtype="torch.float32", attn="sdpa", chat_template="")


def worker(name: str, capacity: int = 4, ready: bool = True) -> WorkerInfo:
    return WorkerInfo(
        id=name,
        queue=f"omega.{name}",
        host="h",
        pid=1,
        device="cpu",
        device_name="cpu",
        capacity=capacity,
        state="ready" if ready else "loading",
        started_at=0.0,
        heartbeat_at=time.time(),
        model=CARD if ready else None,
    )


def new_job(sync: SyncRedis, job_id: str) -> Job:
    settings = load_settings(environ={})
    payload = JobPayload(
        id=job_id,
        messages=(Message("user", (TextPart("hello"),)),),
        params=SamplingParams(max_new_tokens=4),
        created_at=1_700_000_000.0,
    )
    dispatcher = Dispatcher(settings, Redis(), Redis(), sync, fleet=None)  # type: ignore[arg-type]
    return dispatcher.new_job(payload, JobMeta(model="m", created_at=1_700_000_000.0), 60)


def admit(url: str, jobs: list[Job], workers: list[WorkerInfo], max_queue_size: int = 100) -> list[Admission]:
    async def go() -> list[Admission]:
        redis = Redis.from_url(url)
        admitter = Admitter(redis, max_queue_size)
        try:
            return [await admitter.admit(job, workers) for job in jobs]
        finally:
            await redis.aclose()

    return asyncio.run(go())


def fresh(redis_server: RedisServer) -> tuple[str, SyncRedis]:
    url = redis_server.url(DB)
    sync = SyncRedis.from_url(url)
    sync.flushdb()
    return url, sync


def test_the_script_enqueues_exactly_what_rq_would(redis_server: RedisServer) -> None:
    url, sync = fresh(redis_server)
    [admitted] = admit(url, [new_job(sync, "ours")], [worker("a")])
    assert admitted.worker is not None and admitted.worker.queue == "omega.a"
    Queue("omega.b", connection=sync, serializer=MsgpackSerializer).enqueue_job(new_job(sync, "theirs"))

    ours = {k.decode(): v for k, v in sync.hgetall("rq:job:ours").items()}
    theirs = {k.decode(): v for k, v in sync.hgetall("rq:job:theirs").items()}
    assert set(ours) == set(theirs)
    differing = {k for k in ours if ours[k] != theirs[k]}
    # Only what names the job, its queue and its moment may differ.
    assert differing <= {"origin", "enqueued_at", "created_at", "data"}, differing
    assert ours["origin"] == b"omega.a" and ours["status"] == b"queued"
    assert sync.lrange(names.queue_key("omega.a"), 0, -1) == [b"ours"]
    assert {names.queue_key("omega.a").encode(), names.queue_key("omega.b").encode()} <= sync.smembers(
        Queue.redis_queues_keys
    )
    assert sync.ttl("rq:job:ours") == sync.ttl("rq:job:theirs") == -1

    job = Job.fetch("ours", connection=sync, serializer=MsgpackSerializer)
    assert job.get_status() == JobStatus.QUEUED and job.origin == "omega.a"
    assert job.enqueued_at is not None and abs(job.enqueued_at.timestamp() - time.time()) < 60
    assert job.meta == Job.fetch("theirs", connection=sync, serializer=MsgpackSerializer).meta
    assert Queue("omega.a", connection=sync, serializer=MsgpackSerializer).job_ids == ["ours"]


def test_least_loaded_per_unit_of_capacity_and_ready_first(redis_server: RedisServer) -> None:
    url, sync = fresh(redis_server)
    big, small, loading = worker("big", capacity=8), worker("small", capacity=2), worker("loading", ready=False)
    sync.rpush(names.queue_key("omega.small"), "x1")  # small: 1 waiting / 2 = 0.5
    sync.zadd(names.started_key("omega.big"), {"y1": 1, "y2": 2})  # big: 2 in flight / 8 = 0.25
    first, second = admit(url, [new_job(sync, "j1"), new_job(sync, "j2")], [small, loading, big])
    assert first.worker == big and first.waiting == [1, 0, 0] and first.in_flight == [0, 0, 2]
    assert second.worker == big  # 3/8 still below 1/2
    # Only loading workers with room: the job waits for the one that is loading.
    [only] = admit(url, [new_job(sync, "j3")], [loading])
    assert only.worker == loading


def test_full_queues_refuse_and_ties_are_shared(redis_server: RedisServer) -> None:
    url, sync = fresh(redis_server)
    a, b = worker("a"), worker("b")
    results = admit(url, [new_job(sync, f"t{i}") for i in range(6)], [a, b], max_queue_size=3)
    assert Counter(r.worker.queue if r.worker else None for r in results) == {"omega.a": 3, "omega.b": 3}
    [refused] = admit(url, [new_job(sync, "late")], [a, b], max_queue_size=3)
    assert refused.worker is None and refused.waiting == [3, 3]
    assert not sync.exists("rq:job:late")  # nothing written for a refused job
    # With equal loads, the first pick is random: over many rounds both queues get picked first.
    firsts: Counter[str | None] = Counter()
    for round_ in range(20):
        sync.delete(names.queue_key("omega.a"), names.queue_key("omega.b"))
        [r] = admit(url, [new_job(sync, f"r{round_}")], [a, b])
        firsts[r.worker.queue if r.worker else None] += 1
    assert firsts["omega.a"] > 0 and firsts["omega.b"] > 0


def test_jobs_a_feeder_pulled_and_has_not_started_count_as_load(redis_server: RedisServer) -> None:
    """A continuous worker's feeder moves jobs into rq's intermediate list before they start: they
    are that worker's load (routing, /health) as much as started ones."""
    url, sync = fresh(redis_server)
    a, b = worker("a"), worker("b")
    sync.rpush(names.intermediate_key("omega.a"), "p1", "p2", "p3")  # a: 3 pulled / 4
    sync.zadd(names.started_key("omega.b"), {"s1": 1})  # b: 1 started / 4
    [first] = admit(url, [new_job(sync, "j1")], [a, b])
    assert first.worker == b and first.in_flight == [3, 1]
    loads = {load.worker.queue: load.in_flight for load in read_loads(sync, [a, b])}
    assert loads == {"omega.a": 3, "omega.b": 1}  # j1 waits on b: waiting, not in flight
