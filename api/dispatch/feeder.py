"""The batch lane's feeder: batch-priority jobs go onto worker queues only while those have room.

Interactive jobs are enqueued directly, except submit-and-poll jobs accepted while no worker was
live: those wait in the awaiting-worker list, which this feeder drains first, onto any queue with
room under MAX_QUEUE_SIZE, as soon as a worker is live. Batch work (OpenAI batches, jobs marked
"batch") waits in one Redis list and is moved onto a worker queue only while that queue holds fewer than
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
from shared.queue.fleet import QueueLoad, by_load
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
        """Put back what a previous feeder took from a lane but did not enqueue."""
        for job_id in texts(await self.redis.lrange(keys.BATCH_LANE_FEEDING, 0, -1)):
            lane = await anyio.to_thread.run_sync(self._lane_to_return_to, job_id)
            await self.redis.lrem(keys.BATCH_LANE_FEEDING, 1, job_id)
            if lane is not None:
                await self.redis.lpush(lane, job_id)

    def _lane_to_return_to(self, job_id: str) -> str | None:
        """The lane a job taken by a dead feeder goes back to; None if it is gone or enqueued."""
        job = jobs.fetch(self.sync_redis, job_id)
        if job is None or jobs.is_enqueued(job):
            return None
        return keys.lane_for(str(job.meta.get("priority", "batch")))

    def _room(self, waiting: int, capacity: int) -> int:
        depth = self.settings.batch_queue_depth or 2 * capacity
        return max(0, min(depth, self.settings.max_queue_size) - waiting)

    async def feed_once(self) -> int:
        moved = 0
        if await self.redis.llen(keys.AWAITING_WORKER):
            # Interactive jobs: every live worker the dispatcher would route to, up to MAX_QUEUE_SIZE.
            workers = [w for w in await self.fleet.live_workers() if w.error is None]
            loads = by_load(await self.fleet.loads(workers))
            rooms = [(q, max(0, self.settings.max_queue_size - q.waiting)) for q in loads]
            moved += await self._drain(keys.AWAITING_WORKER, rooms)
        if await self.redis.llen(keys.BATCH_LANE):
            workers = [w for w in await self.fleet.live_workers() if w.ready]
            loads = by_load(await self.fleet.loads(workers))
            moved += await self._drain(keys.BATCH_LANE, [(q, self._room(q.waiting, q.worker.capacity)) for q in loads])
        return moved

    async def _drain(self, lane: str, rooms: list[tuple[QueueLoad, int]]) -> int:
        """Move jobs from `lane` onto each queue, as many as its room, in the order given."""
        moved = 0
        for load, room in rooms:
            for _ in range(room):
                raw = await self.redis.lmove(lane, keys.BATCH_LANE_FEEDING, "LEFT", "RIGHT")
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
        wait_s = self.settings.no_worker_wait_s
        deadline = meta.expires_at if meta.priority == "batch" else jobs.hold_deadline(meta, wait_s)
        if deadline is not None and time.time() > deadline:
            finalize_unrun(self.sync_redis, job_id, expired_error(job_id), ttl)
            return False
        jobs.enqueue_on(self.sync_redis, queue_name, job)
        return True

    def _batch_stopping(self, meta: JobMeta) -> bool:
        if meta.batch_id is None:
            return False
        status = text_or_none(self.sync_redis.hget(keys.batch_record(meta.batch_id), "status"))
        return status in STOPPING_BATCH_STATUSES
