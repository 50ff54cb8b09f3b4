"""Put a job on the least-loaded queue (or the batch lane) and wait for its outcome.

Jobs are rq jobs, written exactly as rq's enqueue writes them (shared/queue/: workers, registries
and rq's tooling agree on every job; a test compares the two); the wait is one blocking XREAD on
the job's results stream, never a sleep loop. Every final state writes an entry there
(success, failure, cancellation, expiry), so one wait covers all.
"""

from __future__ import annotations

from redis import Redis as SyncRedis
from redis.asyncio import Redis

from api.dispatch.fleet_view import NO_WORKERS, FleetView
from shared.contract import JobError, JobMeta, JobPayload, JobResult
from shared.errors import GatewayTimeout, Overloaded, ServiceError, ServiceUnavailable, error_from_fields
from shared.fleet import WorkerInfo
from shared.queue import jobs
from shared.queue.admission import Admitter
from shared.queue.durability import Durability
from shared.queue.fleet import QueueLoad
from shared.queue.jobs import Job, LanePusher
from shared.queue.outcomes import NO_ENTRY, Outcome, wait_outcome
from shared.settings import Settings


def raise_for(error: JobError) -> ServiceError:
    return error_from_fields(error.status, error.message, error.param, error.code)


class Dispatcher:
    def __init__(
        self, settings: Settings, redis: Redis, blocking_redis: Redis, sync_redis: SyncRedis, fleet: FleetView
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.blocking_redis = blocking_redis  # its own pool: blocked reads never starve others
        self.sync_redis = sync_redis
        self.fleet = fleet
        # Choosing a queue and enqueueing are one Lua script: MAX_QUEUE_SIZE holds exactly
        # across API replicas, in one round trip.
        # With Redis replicas, a job is acknowledged only once they hold it (Redis WAIT).
        durability = Durability(settings.wait_replicas, settings.redis_wait_timeout_ms)
        self.admitter = Admitter(redis, settings.max_queue_size, durability)
        self.lane = LanePusher(redis, durability)

    def new_job(self, payload: JobPayload, meta: JobMeta, ttl_s: int) -> Job:
        return jobs.create(self.sync_redis, payload, meta, ttl_s, timeout_s=int(self.settings.request_timeout_s) + 60)

    async def submit(self, payload: JobPayload, meta: JobMeta, ttl_s: int, hold: bool = False) -> None:
        """Interactive work: the least-loaded live queue, or Overloaded / ServiceUnavailable.
        Batch work: the lane, which the feeder drains into queues as they have room.
        With `hold` (submit-and-poll jobs), no live worker is no refusal: the job waits in the
        awaiting-worker list, which the feeder drains first once a worker is live."""
        job = self.new_job(payload, meta, ttl_s)
        if meta.priority == "batch":
            await self.lane.push(job)
            return
        workers = await self._candidates(hold)
        if workers is None:
            if not await jobs.hold_for_worker(self.redis, job, self.settings.max_queue_size):
                raise Overloaded("MAX_QUEUE_SIZE jobs already wait for a worker; retry later", retry_after_s=5)
            return
        admitted = await self.admitter.admit(job, workers)
        if admitted.worker is None:
            seen = zip(workers, admitted.waiting, admitted.in_flight, strict=True)
            raise self.fleet.full([QueueLoad(w, waiting, in_flight) for w, waiting, in_flight in seen])

    async def _candidates(self, hold: bool) -> list[WorkerInfo] | None:
        """The live workers to choose from; None when there is none and the job may wait (hold)."""
        try:
            return await self.fleet.candidates()
        except ServiceUnavailable as exc:
            if hold and exc.code == NO_WORKERS:
                return None
            raise

    async def next_outcome(self, job_id: str, timeout_s: float, after: str = NO_ENTRY) -> tuple[Outcome | None, str]:
        """The job's final outcome, waiting up to `timeout_s`; (None, last id) on timeout."""
        return await wait_outcome(self.blocking_redis, job_id, timeout_s, after)

    async def wait(self, job_id: str, timeout_s: float) -> JobResult:
        """The job's result; its stored error re-raised; GatewayTimeout after `timeout_s` (the
        caller decides what becomes of the job and says so)."""
        outcome, _ = await self.next_outcome(job_id, timeout_s)
        if outcome is None:
            raise GatewayTimeout(f"job {job_id} did not finish within {timeout_s:g} s")
        if isinstance(outcome, JobError):
            raise raise_for(outcome)
        return outcome
