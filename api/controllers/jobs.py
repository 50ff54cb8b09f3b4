"""Submit-and-poll: POST /v1/jobs, GET /v1/jobs/{id}[?wait=N], DELETE /v1/jobs/{id}."""

from __future__ import annotations

import hashlib
import time
from typing import Annotated

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.di import Provide
from litestar.params import Parameter

from api.auth import require_api_key
from api.chat_jobs import build_chat_job, completion
from api.jobs import JobSnapshot
from api.protocol import ChatCompletionRequest, ErrorDetail, JobCreateRequest, JobObject
from api.services import Services, get_services
from shared.contract import CancelReason, JobError, JobMeta, JobResult
from shared.errors import InvalidRequest


def _int(value: float | None) -> int | None:
    return int(value) if value is not None else None


async def job_object(svc: Services, snap: JobSnapshot, cancellation: CancelReason | None = None) -> JobObject:
    position, wait = await svc.jobs.position(snap)
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


def _request_digest(data: JobCreateRequest) -> str:
    return hashlib.sha256(msgspec.json.encode(data)).hexdigest()


class JobsController(Controller):
    path = "/v1/jobs"
    tags = ["jobs"]
    guards = [require_api_key]
    dependencies = {"svc": Provide(get_services, sync_to_thread=False)}

    @post("", status_code=202, summary="Submit a chat completion as a job; poll it later")
    async def submit(
        self,
        data: JobCreateRequest,
        svc: Services,
        idempotency_key: Annotated[str | None, Parameter(header="Idempotency-Key", max_length=255)] = None,
    ) -> Response[JobObject]:
        if data.stream:
            raise InvalidRequest(
                "stream is not available for jobs: poll the job, or stream from /v1/chat/completions", param="stream"
            )

        async def create() -> str:
            chat = msgspec.convert(msgspec.to_builtins(data), ChatCompletionRequest)
            fleet = svc.fleet if data.priority == "interactive" else None  # batch work waits in the lane
            expires_at = time.time() + data.expires_after if data.expires_after is not None else None
            payload, model = await build_chat_job(chat, svc.settings, svc.intake, fleet, expires_at=expires_at)
            meta = JobMeta(
                model=model,
                created_at=payload.created_at,
                priority=data.priority,
                expires_at=payload.expires_at,
                metadata=data.metadata or {},
            )
            await svc.dispatcher.submit(payload, meta, svc.settings.job_result_ttl_s)
            return payload.id

        if idempotency_key:
            job_id, created = await svc.jobs.idempotent(idempotency_key, _request_digest(data), create)
        else:
            job_id, created = await create(), True
        body = await job_object(svc, await svc.jobs.snapshot(job_id))
        return Response(body, status_code=202 if created else 200, headers={"Location": body.poll_url})

    @get("/{job_id:str}", summary="A job's state; ?wait=N blocks until it is final (at most N seconds)")
    async def read(
        self,
        job_id: str,
        svc: Services,
        wait: Annotated[float, Parameter(query="wait", ge=0, le=3600)] = 0,
    ) -> JobObject:
        timeout = min(wait, svc.settings.job_wait_max_s)
        snap = await (svc.jobs.wait(job_id, timeout) if timeout > 0 else svc.jobs.snapshot(job_id))
        return await job_object(svc, snap)

    @delete("/{job_id:str}", status_code=200, summary="Cancel a job (queued: never runs; running: stops)")
    async def cancel(self, job_id: str, svc: Services) -> JobObject:
        snap, outcome = await svc.jobs.cancel(job_id)
        return await job_object(svc, snap, outcome)
