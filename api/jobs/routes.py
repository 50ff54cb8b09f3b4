"""Submit-and-poll: POST /v1/jobs, GET /v1/jobs/{id}[?wait=N], DELETE /v1/jobs/{id}."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter

from api.jobs.protocol import JobCreateRequest, JobObject
from api.jobs.submit_poll import SubmitPollService


class JobsController(Controller):
    path = "/v1/jobs"
    tags = ["jobs"]

    @post("", status_code=202, summary="Submit a chat completion as a job; poll it later")
    async def submit(
        self,
        data: JSONBody[JobCreateRequest],
        submit_poll_service: NamedDependency[SubmitPollService],
        idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key", max_length=255)] = None,
    ) -> Response[JobObject]:
        body, created = await submit_poll_service.submit(data, idempotency_key)
        return Response(body, status_code=202 if created else 200, headers={"Location": body.poll_url})

    @get("/{job_id:str}", summary="A job's state; ?wait=N blocks until it is final (at most N seconds)")
    async def read(
        self,
        job_id: FromPath[str],
        submit_poll_service: NamedDependency[SubmitPollService],
        wait: Annotated[float, QueryParameter(name="wait", ge=0, le=3600)] = 0,
    ) -> JobObject:
        return await submit_poll_service.read(job_id, wait)

    @delete("/{job_id:str}", status_code=200, summary="Cancel a job (queued: never runs; running: stops)")
    async def cancel(self, job_id: FromPath[str], submit_poll_service: NamedDependency[SubmitPollService]) -> JobObject:
        return await submit_poll_service.cancel(job_id)
