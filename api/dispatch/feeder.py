"""The batch lane's feeder: batch-priority jobs go onto worker queues only while those have room.

Interactive jobs are enqueued directly; batch work (OpenAI batches, jobs marked "batch") waits
in one Redis list and is moved onto a worker queue only while that queue holds fewer than
BATCH_QUEUE_DEPTH waiting jobs. An interactive request therefore never waits behind more than
that much batch work, however large the batch. One API process feeds at a time (a lock with a
short expiry, so another takes over if it dies); a job taken from the lane is parked in a
"feeding" list until it is on a queue, and put back if the feeder died in between.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import anyio.to_thread
import msgspec
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.queue import Queue

from api.dispatch.fleet_view import FleetView
from api.jobs.service import JobService
from shared import keys
from shared.contract import JobMeta, canceled_error, expired_error
from shared.serializer import MsgpackSerializer
from shared.settings import Settings

log = logging.getLogger("omega.api.feeder")
LOCK_MS = 5000


class LaneFeeder:
    def __init__(
        self, settings: Settings, redis: Redis, sync_redis: SyncRedis, fleet: FleetView, jobs: JobService
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.sync_redis = sync_redis
        self.fleet = fleet
        self.jobs = jobs
        self.identity = uuid.uuid4().hex
        self.holding = False

    async def run(self) -> None:
        while True:
            try:
                moved = await self.feed_once() if await self._hold_lock() else 0
                await asyncio.sleep(0.02 if moved else 0.2)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("feeder paused: %s", exc)
                self.holding = False
                await asyncio.sleep(1)
            except Exception:
                log.exception("feeder error")
                await asyncio.sleep(1)

    async def _hold_lock(self) -> bool:
        if await self.redis.set(keys.FEEDER_LOCK, self.identity, nx=True, px=LOCK_MS):
            self.holding = True
            await self._recover()
            return True
        owner = await self.redis.get(keys.FEEDER_LOCK)
        mine = owner is not None and (owner.decode() if isinstance(owner, bytes) else owner) == self.identity
        if mine:
            await self.redis.pexpire(keys.FEEDER_LOCK, LOCK_MS)
        self.holding = mine
        return mine

    async def _recover(self) -> None:
        """Put back what a previous feeder took from the lane but did not enqueue."""
        for raw in await self.redis.lrange(keys.BATCH_LANE_FEEDING, 0, -1):
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            enqueued = await anyio.to_thread.run_sync(self._was_enqueued, job_id)
            await self.redis.lrem(keys.BATCH_LANE_FEEDING, 1, job_id)
            if not enqueued:
                await self.redis.lpush(keys.BATCH_LANE, job_id)

    def _was_enqueued(self, job_id: str) -> bool:
        try:
            job = Job.fetch(job_id, connection=self.sync_redis, serializer=MsgpackSerializer)
        except NoSuchJobError:
            return True  # gone: nothing to put back
        return bool(job.origin)

    def _room(self, waiting: int, capacity: int) -> int:
        depth = self.settings.batch_queue_depth or 2 * capacity
        return max(0, min(depth, self.settings.max_queue_size) - waiting)

    async def feed_once(self) -> int:
        if not await self.redis.llen(keys.BATCH_LANE):
            return 0
        workers = [w for w in await self.fleet.live_workers() if w.ready]
        loads = sorted(await self.fleet.loads(workers), key=lambda q: q.score)
        moved = 0
        for load in loads:
            for _ in range(self._room(load.waiting, load.worker.capacity)):
                raw = await self.redis.lmove(keys.BATCH_LANE, keys.BATCH_LANE_FEEDING, "LEFT", "RIGHT")
                if raw is None:
                    return moved
                job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
                if await anyio.to_thread.run_sync(self._enqueue, load.worker.queue, job_id):
                    moved += 1
                await self.redis.lrem(keys.BATCH_LANE_FEEDING, 1, job_id)
        return moved

    def _enqueue(self, queue_name: str, job_id: str) -> bool:
        """Enqueue one lane job, unless it was canceled or expired meanwhile (then finalize it)."""
        try:
            job = Job.fetch(job_id, connection=self.sync_redis, serializer=MsgpackSerializer)
        except NoSuchJobError:
            return False
        if job.get_status(refresh=False) == JobStatus.CANCELED:
            return False
        meta = msgspec.convert(job.meta, JobMeta)
        if self.sync_redis.zscore(keys.CANCEL_REQUESTS, job_id) is not None or self._batch_stopping(meta):
            self.jobs.finalize_unrun(job_id, canceled_error(job_id, running=False))
            return False
        if meta.expires_at is not None and time.time() > meta.expires_at:
            self.jobs.finalize_unrun(job_id, expired_error(job_id))
            return False
        Queue(queue_name, connection=self.sync_redis, serializer=MsgpackSerializer).enqueue_job(job)
        return True

    def _batch_stopping(self, meta: JobMeta) -> bool:
        if meta.batch_id is None:
            return False
        status = self.sync_redis.hget(keys.batch_record(meta.batch_id), "status")
        return status in (b"cancelling", b"cancelled", b"expired", b"failed")
