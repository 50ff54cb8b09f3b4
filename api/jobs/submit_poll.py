"""What the /v1/jobs routes call: submit a chat request as a job, read or wait for it, cancel it,
each answered as a job object. The job's state itself is api/jobs/service.py's."""

from __future__ import annotations

import hashlib
import time

import msgspec

from api.chat.protocol import ChatCompletionRequest
from api.chat.service import ChatService, completion
from api.dispatch.dispatcher import Dispatcher
from api.jobs.protocol import ErrorDetail, JobCreateRequest, JobObject
from api.jobs.service import JobService, JobSnapshot
from shared.contract import CancelReason, JobError, JobMeta, JobResult
from shared.errors import InvalidRequest
from shared.settings import Settings


def _int(value: float | None) -> int | None:
    return int(value) if value is not None else None


def _request_digest(data: JobCreateRequest) -> str:
    return hashlib.sha256(msgspec.json.encode(data)).hexdigest()


class SubmitPollService:
    def __init__(self, settings: Settings, jobs: JobService, chat: ChatService, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.jobs = jobs
        self.chat = chat
        self.dispatcher = dispatcher

    async def submit(self, data: JobCreateRequest, idempotency_key: str | None) -> tuple[JobObject, bool]:
        """(the job, created): an Idempotency-Key already seen with this request gives its job back."""
        if data.stream:
            raise InvalidRequest(
                "stream is not available for jobs: poll the job, or stream from /v1/chat/completions", param="stream"
            )

        async def create() -> str:
            if data.priority == "batch":
                await self.jobs.check_lane_room()
            chat = msgspec.convert(msgspec.to_builtins(data), ChatCompletionRequest)
            expires_at = time.time() + data.expires_after if data.expires_after is not None else None
            # Batch work waits in the lane, so only interactive jobs are refused for a full fleet;
            # with no live worker at all they are accepted and wait for one (hold).
            payload, model = await self.chat.build_job(
                chat, check_room=data.priority == "interactive", expires_at=expires_at, hold=True
            )
            meta = JobMeta(
                model=model,
                created_at=payload.created_at,
                priority=data.priority,
                expires_at=payload.expires_at,
                metadata=data.metadata or {},
            )
            await self.dispatcher.submit(payload, meta, self.settings.job_result_ttl_s, hold=True)
            return payload.id

        if idempotency_key:
            job_id, created = await self.jobs.idempotent(idempotency_key, _request_digest(data), create)
        else:
            job_id, created = await create(), True
        return await self.job_object(await self.jobs.snapshot(job_id)), created

    async def read(self, job_id: str, wait_s: float) -> JobObject:
        """The job now, or once it is final (at most `wait_s`, capped by JOB_WAIT_MAX_S)."""
        timeout = min(wait_s, self.settings.job_wait_max_s)
        snap = await (self.jobs.wait(job_id, timeout) if timeout > 0 else self.jobs.snapshot(job_id))
        return await self.job_object(snap)

    async def cancel(self, job_id: str) -> JobObject:
        snap, outcome = await self.jobs.cancel(job_id)
        return await self.job_object(snap, outcome)

    async def job_object(self, snap: JobSnapshot, cancellation: CancelReason | None = None) -> JobObject:
        position, wait = await self.jobs.position(snap)
        result = error = None
        if isinstance(snap.outcome, JobResult):
            finished = snap.ended_at or snap.meta.created_at
            result = completion(
                snap.id,
                snap.meta.model,
                snap.outcome,
                max(0.0, finished - snap.meta.created_at),
                created=snap.meta.created_at,
            )
        elif isinstance(snap.outcome, JobError):
            e = snap.outcome
            error = ErrorDetail(message=e.message, type=e.type, param=e.param, code=e.code)
        return JobObject(
            id=snap.id,
            status=snap.status,
            created_at=int(snap.meta.created_at),
            model=snap.meta.model,
            priority=snap.meta.priority,
            poll_url=f"/v1/jobs/{snap.id}",
            expires_at=_int(snap.meta.expires_at),
            started_at=_int(snap.started_at),
            finished_at=_int(snap.ended_at) if snap.final else None,
            queue_position=position,
            estimated_wait_seconds=wait,
            result=result,
            error=error,
            metadata=snap.meta.metadata,
            cancellation=cancellation,
        )
