"""Put a job on the least-loaded queue and wait for its outcome.

Enqueueing goes through rq (so workers, registries and rq's tooling agree on every job); the
wait is one blocking XREAD on rq's results stream for the job, never a sleep loop. A stored
error from the worker is re-raised as the same ServiceError class, so the client gets the
status and message the worker chose.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from rq.job import Job
from rq.queue import Queue
from rq.results import Result

from api.fleet_view import FleetView
from shared import keys
from shared.contract import JobPayload, JobResult, decode_error, decode_result, encode
from shared.errors import GatewayTimeout, InternalError, error_from_fields
from shared.serializer import MsgpackSerializer
from shared.settings import Settings


@dataclass(frozen=True)
class Submitted:
    job_id: str
    queue: str


class Dispatcher:
    def __init__(
        self, settings: Settings, redis: Redis, blocking_redis: Redis, sync_redis: SyncRedis, fleet: FleetView
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.blocking_redis = blocking_redis  # its own pool: blocked reads never starve others
        self.sync_redis = sync_redis
        self.fleet = fleet
        # Check-then-enqueue is atomic within this process, so MAX_QUEUE_SIZE holds exactly
        # for one API process (and within a handful of jobs across replicas).
        self._admission = asyncio.Lock()

    def _enqueue(self, queue_name: str, payload: JobPayload, timeout_s: int) -> None:
        queue = Queue(queue_name, connection=self.sync_redis, serializer=MsgpackSerializer)
        queue.enqueue_call(
            func=keys.JOB_FUNC,
            args=(encode(payload),),
            job_id=payload.id,
            timeout=timeout_s,
            result_ttl=self.settings.result_ttl_s,
            failure_ttl=self.settings.result_ttl_s,
            description=f"{payload.kind} job",
        )

    async def submit(self, payload: JobPayload) -> Submitted:
        """Enqueue on the least-loaded live queue, or raise Overloaded / ServiceUnavailable."""
        timeout_s = int(self.settings.request_timeout_s) + 60
        async with self._admission:
            target = await self.fleet.choose()
            await anyio.to_thread.run_sync(self._enqueue, target.worker.queue, payload, timeout_s)
        return Submitted(payload.id, target.worker.queue)

    async def wait(self, job_id: str, timeout_s: float) -> JobResult:
        """The job's result; its stored error re-raised; GatewayTimeout after `timeout_s`."""
        stream = keys.rq_results_key(job_id)
        deadline = time.monotonic() + timeout_s
        last_id = "0-0"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GatewayTimeout(
                    f"the job did not finish within {timeout_s:g} s; it keeps running as job {job_id}",
                    param=None,
                    code="timeout",
                )
            block_ms = max(1, int(left * 1000))
            # wait_for guards against a Redis that stops answering without closing the socket.
            reply: Any = await asyncio.wait_for(self.blocking_redis.xread({stream: last_id}, block=block_ms), left + 5)
            if not reply:
                continue
            for entry_id, fields in reply[0][1]:
                last_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                outcome = self._outcome(job_id, last_id, fields)
                if outcome is not None:
                    return outcome

    def _outcome(self, job_id: str, entry_id: str, fields: dict[bytes, bytes]) -> JobResult | None:
        result = Result.restore(job_id, entry_id, fields, connection=None, serializer=MsgpackSerializer)
        if result.type == Result.Type.SUCCESSFUL:
            return decode_result(result.return_value)
        if result.type == Result.Type.RETRIED:
            return None  # the job went back to a queue; keep waiting for its next outcome
        error = decode_error(result.exc_string or "")
        if error is None:
            raise InternalError(f"the job failed (job {job_id})", code="job_failed")
        raise error_from_fields(error.status, error.message, error.param, error.code)

    async def cancel_if_queued(self, job_id: str, queue_name: str) -> None:
        """Drop a job a client gave up on, if no worker has taken it yet."""
        removed = await self.redis.lrem(keys.rq_queue_key(queue_name), 1, job_id)
        if removed:
            await anyio.to_thread.run_sync(self._mark_canceled, job_id)

    def _mark_canceled(self, job_id: str) -> None:
        try:
            job = Job.fetch(job_id, connection=self.sync_redis, serializer=MsgpackSerializer)
            job.cancel()
        except Exception:  # already gone: nothing to cancel
            return
