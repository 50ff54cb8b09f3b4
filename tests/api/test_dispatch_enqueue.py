"""The API writes jobs itself (one async transaction); they must be exactly what rq's own
enqueue writes, or workers, registries and rq's tooling would disagree about them."""

from __future__ import annotations

import asyncio
import time

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from rq.job import Job, JobStatus
from rq.queue import Queue

from api.dispatch import Dispatcher
from shared import keys
from shared.contract import JobMeta, JobPayload, Message, SamplingParams, TextPart
from shared.serializer import MsgpackSerializer
from shared.settings_sources import load_settings
from tests.support.procs import RedisServer

DB = 14  # the e2e stacks count up from db 0


def payload(job_id: str) -> JobPayload:
    return JobPayload(
        id=job_id,
        messages=(Message("user", (TextPart("hello"),)),),
        params=SamplingParams(max_new_tokens=4),
        created_at=1_700_000_000.0,
    )


def test_the_api_enqueues_exactly_what_rq_would(redis_server: RedisServer) -> None:
    url = redis_server.url(DB)
    sync = SyncRedis.from_url(url)
    sync.flushdb()
    settings = load_settings(environ={"REDIS_URL": url})
    meta = JobMeta(model="m", created_at=1_700_000_000.0)

    async def ours() -> None:
        redis = Redis.from_url(url)
        dispatcher = Dispatcher(settings, redis, redis, sync, fleet=None)  # type: ignore[arg-type]
        await dispatcher._enqueue("omega.a", dispatcher.new_job(payload("ours"), meta, 60))
        await redis.aclose()

    asyncio.run(ours())
    theirs = Dispatcher(settings, None, None, sync, fleet=None).new_job(payload("theirs"), meta, 60)  # type: ignore[arg-type]
    Queue("omega.b", connection=sync, serializer=MsgpackSerializer).enqueue_job(theirs)

    ours_hash = {k.decode(): v for k, v in sync.hgetall("rq:job:ours").items()}
    theirs_hash = {k.decode(): v for k, v in sync.hgetall("rq:job:theirs").items()}
    assert set(ours_hash) == set(theirs_hash)
    differing = {k for k in ours_hash if ours_hash[k] != theirs_hash[k]}
    # Only what names the job, its queue and its moment may differ.
    assert differing <= {"origin", "enqueued_at", "created_at", "data", "description"}, differing
    assert ours_hash["origin"] == b"omega.a" and ours_hash["status"] == b"queued"
    assert sync.lrange(keys.rq_queue_key("omega.a"), 0, -1) == [b"ours"]
    assert {keys.rq_queue_key("omega.a").encode(), keys.rq_queue_key("omega.b").encode()} <= sync.smembers(
        Queue.redis_queues_keys
    )
    assert sync.ttl("rq:job:ours") == sync.ttl("rq:job:theirs") == -1

    job = Job.fetch("ours", connection=sync, serializer=MsgpackSerializer)
    assert job.get_status() == JobStatus.QUEUED and job.origin == "omega.a"
    assert job.enqueued_at is not None and abs(job.enqueued_at.timestamp() - time.time()) < 60
    assert job.meta == Job.fetch("theirs", connection=sync, serializer=MsgpackSerializer).meta
    assert Queue("omega.a", connection=sync, serializer=MsgpackSerializer).job_ids == ["ours"]
