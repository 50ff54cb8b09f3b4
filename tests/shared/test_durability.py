"""A new job is acknowledged only once Redis replicas hold it (shared/queue/durability.py), on a
real redis-server: with no replica, asking for one answers 503 + Retry-After, with the job stored."""

from __future__ import annotations

import asyncio

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from shared import keys
from shared.queue import names
from shared.queue.admission import Admitter
from shared.queue.durability import Durability, ReplicationUnconfirmed
from shared.queue.jobs import LanePusher
from tests.api.test_admission import new_job, worker
from tests.support.procs import RedisServer

DB = 13


def run(url: str, step) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        redis = Redis.from_url(url)
        try:
            await step(redis)
        finally:
            await redis.aclose()

    asyncio.run(go())


def test_without_replicas_to_wait_for_nothing_waits(redis_server: RedisServer) -> None:
    url = redis_server.url(DB)
    sync = SyncRedis.from_url(url)
    sync.flushdb()

    async def step(redis: Redis) -> None:
        await Admitter(redis, 10, Durability(0)).admit(new_job(sync, "a"), [worker("w")])
        await LanePusher(redis, Durability(0)).push(new_job(sync, "b"))

    run(url, step)
    assert sync.lrange(names.queue_key("omega.w"), 0, -1) == [b"a"]
    assert sync.lrange(keys.BATCH_LANE, 0, -1) == [b"b"]


def test_too_few_replicas_is_a_retryable_503_naming_the_stored_job(redis_server: RedisServer) -> None:
    url = redis_server.url(DB)
    sync = SyncRedis.from_url(url)
    sync.flushdb()
    sync.script_flush()  # a fresh server (as after a failover) has no script cache: loaded on NOSCRIPT
    wanted = Durability(replicas=1, timeout_ms=50)

    async def admit(redis: Redis) -> None:
        await Admitter(redis, 10, wanted).admit(new_job(sync, "a"), [worker("w")])

    async def push(redis: Redis) -> None:
        await LanePusher(redis, wanted).push(new_job(sync, "b"))

    for step, job_id in ((admit, "a"), (push, "b")):
        with pytest.raises(ReplicationUnconfirmed) as caught:
            run(url, step)
        assert caught.value.job_id == job_id
        assert caught.value.status_code == 503 and caught.value.headers["Retry-After"]
        assert caught.value.code == "replication_unconfirmed"
        assert sync.exists(names.job_key(job_id))  # stored on the primary: a retry may find it
