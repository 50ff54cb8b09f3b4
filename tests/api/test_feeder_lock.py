"""The feeder's lock (redis-py's Lock) on a real Redis: one holder, renewed, taken over after expiry."""

from __future__ import annotations

import asyncio

from redis import Redis as SyncRedis
from redis.asyncio import Redis

from api.dispatch.feeder import LaneFeeder
from shared import keys
from shared.settings_sources import load_settings
from tests.support.procs import RedisServer

DB = 9


def test_one_feeder_holds_the_lock_and_another_takes_over_after_it_lapses(redis_server: RedisServer) -> None:
    sync = SyncRedis.from_url(redis_server.url(DB))
    sync.flushdb()
    sync.rpush(keys.BATCH_LANE_FEEDING, "left-by-a-dead-feeder")  # no such job: nothing to put back

    async def go() -> None:
        redis = Redis.from_url(redis_server.url(DB))
        settings = load_settings(environ={})
        first, second = (LaneFeeder(settings, redis, sync, fleet=None) for _ in range(2))  # type: ignore[arg-type]
        try:
            assert await first._hold_lock()  # taken: recovers the feeding list first
            assert sync.llen(keys.BATCH_LANE_FEEDING) == 0
            assert not await second._hold_lock()
            sync.pexpire(keys.FEEDER_LOCK, 50)
            assert await first._hold_lock()  # renewed: the full expiry again
            assert sync.pttl(keys.FEEDER_LOCK) > 1000
            sync.delete(keys.FEEDER_LOCK)  # lapsed (e.g. a long pause)
            assert await second._hold_lock()
            assert not await first._hold_lock()  # its token is no longer there: it does not extend it
            assert await second._hold_lock()
        finally:
            await redis.aclose()

    asyncio.run(go())
