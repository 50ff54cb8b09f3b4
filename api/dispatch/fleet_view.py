"""The API's view of the worker fleet: who is alive, how loaded each queue is, where to send a job."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from shared import load_failures
from shared.errors import Overloaded, ServiceUnavailable
from shared.fleet import WorkerInfo
from shared.queue.fleet import QueueLoad, read_loads_async, read_workers_async, stranded_async
from shared.settings import Settings

__all__ = ["NO_WORKERS", "FleetView", "QueueLoad"]
NO_WORKERS = "no_workers"  # the 503 code when no worker is live (one that failed to load says so)


async def no_worker_error(redis: Redis) -> ServiceUnavailable:
    """503 at once: with the reason when workers failed to load the model (perhaps never)."""
    reason = await load_failures.latest(redis)
    if reason is not None:
        return ServiceUnavailable(
            f"no worker could load the model ({reason}); see GET /health", retry_after_s=30, code="model_load_failed"
        )
    return ServiceUnavailable("no worker is available yet; retry shortly", retry_after_s=5, code=NO_WORKERS)


class FleetView:
    def __init__(self, redis: Redis, settings: Settings, cache_s: float = 0.5) -> None:
        self.redis = redis
        self.settings = settings
        self.cache_s = cache_s
        self._cached: list[WorkerInfo] = []
        self._cached_at = 0.0

    async def live_workers(self, fresh: bool = False, include_failed: bool = False) -> list[WorkerInfo]:
        """Workers whose heartbeat is recent, cached briefly: routing reads this per request.

        A worker that failed to start keeps its record (with the error) until it expires; it is
        left out unless `include_failed` (for /health).
        """
        now = time.time()
        if fresh or include_failed or now - self._cached_at >= self.cache_s:
            records = await self._read()
            self._cached = [w for w in records if w.state in ("loading", "ready")]
            self._cached_at = now
            if include_failed:
                return records
        return self._cached

    async def _read(self) -> list[WorkerInfo]:
        return await read_workers_async(self.redis, self.settings.worker_ttl_s)

    async def loads(self, workers: list[WorkerInfo]) -> list[QueueLoad]:
        return await read_loads_async(self.redis, workers)

    async def stranded(self, workers: list[WorkerInfo]) -> int:
        """Jobs on the queues of gone workers (not among `workers`), until the janitor moves them."""
        return await stranded_async(self.redis, {w.queue for w in workers})

    async def candidates(self) -> list[WorkerInfo]:
        """The live workers a job may go to; ServiceUnavailable when there are none."""
        # A worker carrying an error is retrying after a failed start: not routed to until ready.
        workers = [w for w in await self.live_workers() if w.error is None]
        if not workers:
            raise await no_worker_error(self.redis)
        return workers

    def full(self, loads: list[QueueLoad]) -> Overloaded:
        return Overloaded("every queue is full (MAX_QUEUE_SIZE); retry later", retry_after_s=self.retry_after(loads))

    async def check_room(self, hold: bool = False) -> None:
        """Refuse early (no worker, every queue full) before a request's images are fetched and
        stored. Choosing the queue is shared/queue/admission.py's, atomically with the enqueue.
        With `hold`, no live worker is no refusal (the job will wait for one)."""
        try:
            workers = await self.candidates()
        except ServiceUnavailable as exc:
            if hold and exc.code == NO_WORKERS:
                return
            raise
        loads = await self.loads(workers)
        if all(q.waiting >= self.settings.max_queue_size for q in loads):
            raise self.full(loads)

    def retry_after(self, loads: list[QueueLoad]) -> int:
        """A rough wait: one batch time per batch of queued work ahead, at least a second."""
        per_batch_s = 1.0
        batches = min(q.waiting / max(1, q.worker.capacity) for q in loads) if loads else 1
        return max(1, int(batches * per_batch_s / max(1, len(loads))))
