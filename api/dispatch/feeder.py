"""The batch lane's feeder: batch-priority jobs go onto worker queues only while those have room.

Interactive jobs are enqueued directly; batch work (OpenAI batches, jobs marked "batch") waits
in one Redis list and is moved onto a worker queue only while that queue holds fewer than
BATCH_QUEUE_DEPTH waiting jobs. An interactive request therefore never waits behind more than
that much batch work, however large the batch. One API process feeds at a time (redis-py's Lock
with a short expiry, so another takes over if it dies); a job taken from the lane is parked in a
"feeding" list until it is on a queue, and put back if the feeder died in between.
"""

from __future__ import annotations

import logging
import time

import anyio.to_thread
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import LockError

from api.background import run_forever
from api.dispatch.fleet_view import FleetView
from shared import keys
from shared.contract import STOPPING_BATCH_STATUSES, JobMeta, canceled_error, expired_error
from shared.queue import jobs
from shared.queue.finish import finalize_unrun
from shared.queue.fleet import by_load
from shared.redis_text import text, text_or_none, texts
from shared.settings import Settings

log = logging.getLogger("omega.api.feeder")
LOCK_S = 5.0


class LaneFeeder:
    def __init__(self, settings: Settings, redis: Redis, sync_redis: SyncRedis, fleet: FleetView) -> None:
        self.settings = settings
        self.redis = redis
        self.sync_redis = sync_redis
        self.fleet = fleet
        # Token-checked: only the holder extends or releases it; the holder renews it every tick.
        self.lock = redis.lock(keys.FEEDER_LOCK, timeout=LOCK_S, blocking=False, thread_local=False)

    async def run(self) -> None:
        await run_forever("feeder", self._tick, log)

    async def _tick(self) -> float:
        moved = await self.feed_once() if await self._hold_lock() else 0
        return 0.02 if moved else 0.2

    async def _hold_lock(self) -> bool:
        """Renew the lock if this process holds it (atomically, only while the key still holds
        its token), else try to take it; a new holder first recovers what the last one left."""
        try:
            await self.lock.reacquire()
            return True
        except LockError:  # never held, expired during a pause, or taken over
            pass
        if not await self.lock.acquire():
            return False
        await self._recover()
        return True

    async def _recover(self) -> None:
        """Put back what a previous feeder took from the lane but did not enqueue."""
        for job_id in texts(await self.redis.lrange(keys.BATCH_LANE_FEEDING, 0, -1)):
            enqueued = await anyio.to_thread.run_sync(self._was_enqueued, job_id)
            await self.redis.lrem(keys.BATCH_LANE_FEEDING, 1, job_id)
            if not enqueued:
                await self.redis.lpush(keys.BATCH_LANE, job_id)

    def _was_enqueued(self, job_id: str) -> bool:
        job = jobs.fetch(self.sync_redis, job_id)
        return job is None or jobs.is_enqueued(job)  # gone: nothing to put back

    def _room(self, waiting: int, capacity: int) -> int:
        depth = self.settings.batch_queue_depth or 2 * capacity
        return max(0, min(depth, self.settings.max_queue_size) - waiting)

    async def feed_once(self) -> int:
        if not await self.redis.llen(keys.BATCH_LANE):
            return 0
        workers = [w for w in await self.fleet.live_workers() if w.ready]
        loads = by_load(await self.fleet.loads(workers))
        moved = 0
        for load in loads:
            for _ in range(self._room(load.waiting, load.worker.capacity)):
                raw = await self.redis.lmove(keys.BATCH_LANE, keys.BATCH_LANE_FEEDING, "LEFT", "RIGHT")
                if raw is None:
                    return moved
                job_id = text(raw)
                if await anyio.to_thread.run_sync(self._enqueue, load.worker.queue, job_id):
                    moved += 1
                await self.redis.lrem(keys.BATCH_LANE_FEEDING, 1, job_id)
        return moved

    def _enqueue(self, queue_name: str, job_id: str) -> bool:
        """Enqueue one lane job, unless it was canceled or expired meanwhile (then finalize it)."""
        job = jobs.fetch(self.sync_redis, job_id)
        if job is None or jobs.is_canceled(job):
            return False
        meta = jobs.meta_of(job)
        ttl = self.settings.job_result_ttl_s
        if self.sync_redis.zscore(keys.CANCEL_REQUESTS, job_id) is not None or self._batch_stopping(meta):
            finalize_unrun(self.sync_redis, job_id, canceled_error(job_id, running=False), ttl)
            return False
        if meta.expires_at is not None and time.time() > meta.expires_at:
            finalize_unrun(self.sync_redis, job_id, expired_error(job_id), ttl)
            return False
        jobs.enqueue_on(self.sync_redis, queue_name, job)
        return True

    def _batch_stopping(self, meta: JobMeta) -> bool:
        if meta.batch_id is None:
            return False
        status = text_or_none(self.sync_redis.hget(keys.batch_record(meta.batch_id), "status"))
        return status in STOPPING_BATCH_STATUSES
