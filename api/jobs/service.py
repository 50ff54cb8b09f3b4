"""Submit-and-poll jobs: what state a job is in, where it waits, and how it is canceled or expires.

A job's state is rq's status and meta plus the latest entry of its results stream (the outcome);
nothing is stored twice. Canceled and expired are final states of their own: they are written as
results with a distinctive error code, so a waiter on the results stream wakes for them too.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from api.dispatch.dispatcher import Dispatcher
from api.dispatch.fleet_view import FleetView
from shared import keys
from shared.contract import CancelReason, JobError, canceled_error, expired_error
from shared.errors import Conflict, NotFound, ServiceUnavailable
from shared.queue import names
from shared.queue.durability import ReplicationUnconfirmed
from shared.queue.finish import finalize_unrun
from shared.queue.outcomes import JobSnapshot, read_snapshot
from shared.redis_text import text
from shared.settings import Settings

# How long an Idempotency-Key stays "pending" at most (accepting a job, images and all, takes less).
PENDING_TTL_S = 300

__all__ = ["JobService", "JobSnapshot"]


class JobService:
    def __init__(
        self, settings: Settings, redis: Redis, sync_redis: SyncRedis, fleet: FleetView, dispatcher: Dispatcher
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.sync_redis = sync_redis
        self.fleet = fleet
        self.dispatcher = dispatcher

    # --- reading ---------------------------------------------------------------------------
    def _read(self, job_id: str) -> JobSnapshot | None:
        return read_snapshot(self.sync_redis, job_id, self.settings.model_name)

    async def snapshot(self, job_id: str) -> JobSnapshot:
        """The job's current state (expiring it first if its deadline passed), or 404."""
        snap = await anyio.to_thread.run_sync(self._read, job_id)
        if snap is None:
            raise NotFound(
                f"job {job_id} not found (results are kept for JOB_RESULT_TTL_S={self.settings.job_result_ttl_s} s)",
                param="job_id",
                code="job_not_found",
            )
        if snap.past_deadline and await self._take_out_of_line(snap):
            await anyio.to_thread.run_sync(self._finalize_unrun, job_id, expired_error(job_id))
            return await self.snapshot(job_id)
        return snap

    async def wait(self, job_id: str, timeout_s: float) -> JobSnapshot:
        """The snapshot once the job is final, or after `timeout_s` (waiting on Redis, not polling)."""
        snap = await self.snapshot(job_id)
        deadline = time.monotonic() + timeout_s
        while not snap.final and (left := deadline - time.monotonic()) > 0:
            if snap.status == "queued" and snap.meta.expires_at is not None:
                # Wake at the job's own deadline too: nothing else writes to its stream then.
                left = min(left, max(0.0, snap.meta.expires_at - time.time()) + 0.05)
            await self.dispatcher.next_outcome(job_id, left, after=snap.last_result_id)
            snap = await self.snapshot(job_id)
        return snap

    async def position(self, snap: JobSnapshot) -> tuple[int | None, float | None]:
        """1-based place in line and a rough wait in seconds, for a queued job."""
        if snap.status != "queued":
            return None, None
        workers = await self.fleet.live_workers()
        if snap.origin:
            index: Any = await self.redis.lpos(names.queue_key(snap.origin), snap.id)
            if index is None:
                return None, None
            mine = [w for w in workers if w.queue == snap.origin]
            capacity = mine[0].capacity if mine else self.settings.max_batch_size
            per_batch = mine[0].avg_batch_seconds if mine else 0.0
            position = int(index) + 1
        elif snap.meta.priority != "batch":  # accepted while no worker was live: no estimate yet
            index = await self.redis.lpos(keys.AWAITING_WORKER, snap.id)
            return (None, None) if index is None else (int(index) + 1, None)
        else:
            index = await self.redis.lpos(keys.BATCH_LANE, snap.id)
            if index is None:
                return None, None
            loads = await self.fleet.loads(workers)
            position = sum(q.waiting for q in loads) + int(index) + 1
            capacity = sum(w.capacity for w in workers) or self.settings.max_batch_size
            per_batch = max((w.avg_batch_seconds for w in workers), default=0.0)
        return position, round(math.ceil(position / capacity) * per_batch, 3)

    async def check_lane_room(self) -> None:
        """503 + Retry-After when the batch lane holds BATCH_LANE_MAX jobs (a quota on what
        clients can park in Redis; the lane drains as workers take its jobs)."""
        limit = self.settings.batch_lane_max
        if int(await self.redis.llen(keys.BATCH_LANE)) >= limit:
            raise ServiceUnavailable(
                f"the batch lane is full ({limit} jobs waiting, BATCH_LANE_MAX); retry later",
                code="batch_lane_full",
                retry_after_s=30,
            )

    # --- changing ----------------------------------------------------------------------------
    async def _take_out_of_line(self, snap: JobSnapshot) -> bool:
        """Remove a queued job from its queue or lane; False if a worker took it first."""
        key = names.queue_key(snap.origin) if snap.origin else keys.lane_for(snap.meta.priority)
        return bool(await self.redis.lrem(key, 1, snap.id))

    def _finalize_unrun(self, job_id: str, error: JobError) -> None:
        finalize_unrun(self.sync_redis, job_id, error, self.settings.job_result_ttl_s)

    async def stop(self, job_id: str) -> None:
        """Cancel without waiting (a batch being canceled): queued never runs, running is asked to stop."""
        try:
            snap = await self.snapshot(job_id)
        except NotFound:
            return
        if snap.final:
            return
        if snap.status == "queued" and await self._take_out_of_line(snap):
            await anyio.to_thread.run_sync(self._finalize_unrun, job_id, canceled_error(job_id, running=False))
        else:
            await self.redis.zadd(keys.CANCEL_REQUESTS, {job_id: time.time()})

    async def cancel(self, job_id: str) -> tuple[JobSnapshot, CancelReason]:
        snap = await self.snapshot(job_id)
        if snap.final:
            raise Conflict(f"job {job_id} is already {snap.status}", param="job_id", code="job_already_final")
        if snap.status == "queued" and await self._take_out_of_line(snap):
            await anyio.to_thread.run_sync(self._finalize_unrun, job_id, canceled_error(job_id, running=False))
            return await self.snapshot(job_id), "canceled_before_start"
        # Running (or taken by a worker just now): the worker sees the request at its next
        # heartbeat and stops the row at the next decoding step.
        now = time.time()
        await self.redis.zadd(keys.CANCEL_REQUESTS, {job_id: now})
        await self.redis.zremrangebyscore(keys.CANCEL_REQUESTS, "-inf", now - 86400)
        snap = await self.wait(job_id, self.settings.cancel_wait_s)
        if snap.status == "canceled":
            return snap, "stopped_while_running"
        if snap.final:
            return snap, "finished_before_cancel"
        return snap, "cancel_requested"

    # --- idempotency -------------------------------------------------------------------------
    async def idempotent(self, key: str, request_digest: str, create: Callable[[], Awaitable[str]]) -> tuple[str, bool]:
        """(job id, created): the same key and request give the same job; another request, 409."""
        slot = keys.idempotency(hashlib.sha256(key.encode()).hexdigest())
        ttl = self.settings.job_result_ttl_s
        # "pending" lives briefly: one lost with a Redis primary must not block the key for long.
        if await self.redis.set(slot, f"pending:{request_digest}", nx=True, ex=min(ttl, PENDING_TTL_S)):
            try:
                job_id = await create()
            except ReplicationUnconfirmed as exc:
                # The job may survive: a retry with this key gets it back rather than a second one.
                await self.redis.set(slot, f"{request_digest}:{exc.job_id}", ex=ttl)
                raise
            except BaseException:
                await self.redis.delete(slot)
                raise
            await self.redis.set(slot, f"{request_digest}:{job_id}", ex=ttl)
            return job_id, True
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            raw = await self.redis.get(slot)
            value = text(raw) if raw is not None else ""
            digest, _, job_id = value.partition(":")
            if digest != "pending":
                if not value:  # the first request failed and released the key: try again
                    return await self.idempotent(key, request_digest, create)
                if digest != request_digest:
                    raise Conflict(
                        "this Idempotency-Key was used with a different request",
                        param="Idempotency-Key",
                        code="idempotency_key_reused",
                    )
                return job_id, False
            await anyio.sleep(0.05)  # the first request with this key is still storing its images
        raise Conflict("a request with this Idempotency-Key is still being accepted; retry", code="idempotency_pending")
