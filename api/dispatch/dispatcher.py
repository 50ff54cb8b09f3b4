"""Put a job on the least-loaded queue (or the batch lane) and wait for its outcome.

Jobs are rq jobs, written exactly as rq's enqueue writes them (so workers, registries and rq's
tooling agree on every job; a test compares the two); the wait is one blocking XREAD on rq's
results stream for the job, never a sleep loop. Every final state writes an entry there
(success, failure, cancellation, expiry), so one wait covers all.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import now

from api.dispatch.admission import Admitter
from api.dispatch.fleet_view import FleetView, QueueLoad
from shared import keys
from shared.contract import JobError, JobMeta, JobPayload, JobResult, decode_error, decode_result, encode
from shared.errors import GatewayTimeout, ServiceError, error_from_fields
from shared.serializer import MsgpackSerializer
from shared.settings import Settings

Outcome = JobResult | JobError


@dataclass(frozen=True)
class Submitted:
    job_id: str
    queue: str | None  # None while the job waits in the batch lane


def parse_result(job_id: str, entry_id: str, fields: dict[Any, Any]) -> Outcome | None:
    """A results-stream entry as our outcome; None for an entry that is not final (a retry)."""
    result = Result.restore(job_id, entry_id, fields, connection=None, serializer=MsgpackSerializer)
    if result.type == Result.Type.SUCCESSFUL:
        return decode_result(result.return_value)
    if result.type == Result.Type.RETRIED:
        return None
    error = decode_error(result.exc_string or "")
    return error or JobError(
        status=500, type="server_error", message=f"the job failed (job {job_id})", code="job_failed"
    )


JobFields = dict[FieldT, EncodableT]


def job_fields(job: Job) -> JobFields:
    """The job's Redis hash, as rq's Job.save writes it."""
    fields: JobFields = job.to_dict()
    return fields


def queued_fields(job: Job) -> JobFields:
    """The job's hash as rq's Queue.enqueue_job leaves it (enqueue time, queued status; the
    admission script adds the queue it chose as `origin`)."""
    job.enqueued_at = now()
    job._status = JobStatus.QUEUED
    return job_fields(job)


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
        self.admitter = Admitter(redis, settings.max_queue_size)

    def new_job(self, payload: JobPayload, meta: JobMeta, ttl_s: int) -> Job:
        return Job.create(
            func=keys.JOB_FUNC,
            args=(encode(payload),),
            id=payload.id,
            connection=self.sync_redis,
            serializer=MsgpackSerializer,
            timeout=int(self.settings.request_timeout_s) + 60,
            result_ttl=ttl_s,
            failure_ttl=ttl_s,
            meta=msgspec.to_builtins(meta),
            description=f"{payload.kind} job",
        )

    async def _to_lane(self, job: Job) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(job.key, mapping=job_fields(job))
            pipe.rpush(keys.BATCH_LANE, job.id)
            await pipe.execute()

    async def submit(self, payload: JobPayload, meta: JobMeta, ttl_s: int) -> Submitted:
        """Interactive work: the least-loaded live queue, or Overloaded / ServiceUnavailable.
        Batch work: the lane, which the feeder drains into queues as they have room."""
        job = self.new_job(payload, meta, ttl_s)
        if meta.priority == "batch":
            await self._to_lane(job)
            return Submitted(payload.id, None)
        workers = await self.fleet.candidates()
        admitted = await self.admitter.admit(job.key, job.id, queued_fields(job), workers)
        if admitted.worker is None:
            seen = zip(workers, admitted.waiting, admitted.in_flight, strict=True)
            raise self.fleet.full([QueueLoad(w, waiting, in_flight) for w, waiting, in_flight in seen])
        return Submitted(payload.id, admitted.worker.queue)

    async def next_outcome(self, job_id: str, timeout_s: float, after: str = "0-0") -> tuple[Outcome | None, str]:
        """The job's final outcome, waiting up to `timeout_s`; (None, last id) on timeout."""
        stream = keys.rq_results_key(job_id)
        deadline = time.monotonic() + timeout_s
        last_id = after
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, last_id
            try:
                # wait_for guards against a Redis that stops answering without closing the socket.
                reply: Any = await asyncio.wait_for(
                    self.blocking_redis.xread({stream: last_id}, block=max(1, int(left * 1000))), left + 5
                )
            except (RedisConnectionError, RedisTimeoutError, TimeoutError):
                # Redis restarting: the job is safe in it (append-only); keep waiting for it.
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                continue
            for entry_id, fields in reply[0][1] if reply else []:
                last_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                outcome = parse_result(job_id, last_id, fields)
                if outcome is not None:
                    return outcome, last_id

    async def wait(self, job_id: str, timeout_s: float) -> JobResult:
        """The job's result; its stored error re-raised; GatewayTimeout after `timeout_s`."""
        outcome, _ = await self.next_outcome(job_id, timeout_s)
        if outcome is None:
            raise GatewayTimeout(
                f"the job did not finish within {timeout_s:g} s; it keeps running: poll "
                f"GET /v1/jobs/{job_id} for its result"
            )
        if isinstance(outcome, JobError):
            raise raise_for(outcome)
        return outcome

    async def run(self, payload: JobPayload, meta: JobMeta) -> JobResult:
        """The synchronous path: submit, then wait up to REQUEST_TIMEOUT_S."""
        await self.submit(payload, meta, self.settings.result_ttl_s)
        return await self.wait(payload.id, self.settings.request_timeout_s)
