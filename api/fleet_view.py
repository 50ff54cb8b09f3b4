"""The API's view of the worker fleet: who is alive, how loaded each queue is, where to send a job."""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from shared import keys, load_failures
from shared.errors import Overloaded, ServiceUnavailable
from shared.fleet import WorkerInfo, decode_info
from shared.settings import Settings


@dataclass(frozen=True)
class QueueLoad:
    worker: WorkerInfo
    waiting: int
    in_flight: int

    @property
    def score(self) -> float:
        """Work per unit of capacity: what "least loaded" compares."""
        return (self.waiting + self.in_flight) / max(1, self.worker.capacity)


async def no_worker_error(redis: Redis) -> ServiceUnavailable:
    """503 at once: with the reason when workers failed to load the model (perhaps never)."""
    reason = await load_failures.latest(redis)
    if reason is not None:
        return ServiceUnavailable(
            f"no worker could load the model ({reason}); see GET /health", retry_after_s=30, code="model_load_failed"
        )
    return ServiceUnavailable("no worker is available yet; retry shortly", retry_after_s=5, code="no_workers")


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
            records = await self._read(now)
            self._cached = [w for w in records if w.state in ("loading", "ready")]
            self._cached_at = now
            if include_failed:
                return records
        return self._cached

    async def _read(self, now: float) -> list[WorkerInfo]:
        ids = await self.redis.zrangebyscore(keys.WORKERS, now - self.settings.worker_ttl_s, "+inf")
        if not ids:
            return []
        names = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
        workers = [decode_info(raw) for raw in await self.redis.mget([keys.worker_info(n) for n in names]) if raw]
        return sorted((w for w in workers if w is not None), key=lambda w: w.id)

    async def loads(self, workers: list[WorkerInfo]) -> list[QueueLoad]:
        if not workers:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker in workers:
                pipe.llen(keys.rq_queue_key(worker.queue))
                pipe.zcard(keys.rq_started_key(worker.queue))
            counts = await pipe.execute()
        return [QueueLoad(w, int(counts[2 * i]), int(counts[2 * i + 1])) for i, w in enumerate(workers)]

    async def candidates(self) -> list[WorkerInfo]:
        """The live workers a job may go to; ServiceUnavailable when there are none."""
        # A worker carrying an error is retrying after a failed start: not routed to until ready.
        workers = [w for w in await self.live_workers() if w.error is None]
        if not workers:
            raise await no_worker_error(self.redis)
        return workers

    def full(self, loads: list[QueueLoad]) -> Overloaded:
        return Overloaded("every queue is full (MAX_QUEUE_SIZE); retry later", retry_after_s=self.retry_after(loads))

    async def check_room(self) -> None:
        """Refuse early (no worker, every queue full) before a request's images are fetched and
        stored. Choosing the queue is api/admission.py's, atomically with the enqueue."""
        loads = await self.loads(await self.candidates())
        if all(q.waiting >= self.settings.max_queue_size for q in loads):
            raise self.full(loads)

    def retry_after(self, loads: list[QueueLoad]) -> int:
        """A rough wait: one batch time per batch of queued work ahead, at least a second."""
        per_batch_s = 1.0
        batches = min(q.waiting / max(1, q.worker.capacity) for q in loads) if loads else 1
        return max(1, int(batches * per_batch_s / max(1, len(loads))))
