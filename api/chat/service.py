"""Chat requests become jobs, and job results become `chat.completion` objects.

`build_chat_job` and `completion` are shared by the synchronous endpoint, submit-and-poll jobs
and batch lines, so all three answer the same request with the same job and the same
completion. `ChatService` is what the chat routes (/v1/chat/completions, /generate) call.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec

from api.chat.convert import (
    chat_params,
    check_model,
    check_size,
    generate_params,
    image_refs,
    job_messages,
    refuse_unsupported,
)
from api.chat.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    GenerateDetails,
    GenerateRequest,
    GenerateResponse,
    ResponseMessage,
    ServiceInfo,
    Usage,
)
from api.chat.request_log import failures_logged, log_success
from api.chat.streaming import ChatStream
from api.dispatch.dispatcher import Dispatcher
from api.dispatch.fleet_view import FleetView
from api.intake.images import ImageIntake
from api.jobs.service import JobService
from shared.contract import JobMeta, JobPayload, JobResult
from shared.errors import GatewayTimeout, InvalidRequest
from shared.prompt import refuse_long_prompt
from shared.settings import Settings


async def build_chat_job(
    data: ChatCompletionRequest,
    settings: Settings,
    intake: ImageIntake,
    fleet: FleetView | None,
    *,
    job_id: str | None = None,
    expires_at: float | None = None,
    batch_id: str | None = None,
    streaming: bool = False,
    hold: bool = False,
) -> tuple[JobPayload, str]:
    """Validate, store the images, and build the job (nothing is enqueued here).

    With `fleet`, capacity is checked first: a full or worker-less service refuses before any
    image is fetched or stored. With `streaming`, the worker publishes the text as it grows
    (only a caller that reads it asks: jobs and batch lines are answered whole). Returns the job
    and the model name to answer with. With `hold`, no live worker is no refusal (a
    submit-and-poll job waits for one).
    """
    model = check_model(data.model, settings)
    check_size(data.messages, settings)
    refuse_unsupported(data)
    params = chat_params(data, settings)
    refs = image_refs(data.messages)
    intake.check_refs(refs)
    if fleet is not None and refs:
        # Refuse a full or worker-less service before fetching and storing any image (the
        # enqueue checks again; a text-only request needs only that one check).
        await fleet.check_room(hold=hold)
    digests = await intake.store_all(refs, batch_id=batch_id)
    payload = JobPayload(
        id=job_id or uuid.uuid4().hex,
        kind="chat",
        messages=job_messages(data.messages, digests),
        params=params,
        created_at=time.time(),
        expires_at=expires_at,
        batch_id=batch_id,
        stream=streaming,
    )
    return payload, model


def completion(
    job_id: str, model: str, result: JobResult, latency_s: float, created: float | None = None
) -> ChatCompletion:
    return ChatCompletion(
        id=f"chatcmpl-{job_id}",
        created=int(created if created is not None else time.time()),
        model=model,
        choices=[
            Choice(
                index=0,
                message=ResponseMessage(role="assistant", content=result.text),
                finish_reason=result.finish_reason,
            )
        ],
        usage=Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
        ),
        latency_seconds=round(latency_s, 6),
        service=ServiceInfo(
            job_id=job_id,
            queue_seconds=round(result.queue_seconds, 6),
            generation_seconds=round(result.generation_seconds, 6),
            batch_id=result.micro_batch_id,
            batch_size=result.micro_batch_size,
            seed=result.seed,
            time_to_first_token_seconds=result.first_token_seconds,
            truncated_prompt_tokens=result.truncated_prompt_tokens,
        ),
    )


class ChatService:
    """The chat slice's work: a whole completion, a stream of chunks, or a /generate answer."""

    def __init__(
        self, settings: Settings, intake: ImageIntake, fleet: FleetView, dispatcher: Dispatcher, jobs: JobService
    ) -> None:
        self.settings = settings
        self.intake = intake
        self.fleet = fleet
        self.dispatcher = dispatcher
        self.jobs = jobs

    async def build_job(
        self,
        data: ChatCompletionRequest,
        *,
        check_room: bool = True,
        expires_at: float | None = None,
        hold: bool = False,
    ) -> tuple[JobPayload, str]:
        """The job for a chat request (see `build_chat_job`); batch-priority work skips the
        capacity check (`check_room=False`): it waits in the lane, not on a queue."""
        fleet = self.fleet if check_room else None
        return await build_chat_job(
            data, self.settings, self.intake, fleet, expires_at=expires_at, streaming=bool(data.stream), hold=hold
        )

    async def complete(
        self,
        data: ChatCompletionRequest,
        *,
        client_gone: Callable[[], Awaitable[object]] | None = None,
        idempotency_key: str | None = None,
    ) -> ChatCompletion:
        """Submit, wait for the result (REQUEST_TIMEOUT_S), answer a `chat.completion`.

        No orphan work: a client that goes away (`client_gone` returns) or a wait that times out
        (504) cancels the job, unless the client sent an Idempotency-Key: then the job keeps
        running and a retry with the same key waits for the same job."""
        started = time.perf_counter()
        if idempotency_key:
            job_id, model, created_at = await self._idempotent_job(data, idempotency_key)
        else:
            payload, model = await self.build_job(data)
            meta = JobMeta(model=model, created_at=payload.created_at)
            await self.dispatcher.submit(payload, meta, self.settings.result_ttl_s)
            job_id, created_at = payload.id, payload.created_at
        with failures_logged("chat", job_id):
            result = await self._wait(job_id, client_gone, keep=bool(idempotency_key))
        latency = time.perf_counter() - started
        log_success("chat", job_id, latency, model, result, chat_params(data, self.settings))
        return completion(job_id, model, result, latency, created=created_at)

    async def _idempotent_job(self, data: ChatCompletionRequest, key: str) -> tuple[str, str, float]:
        """(job id, model, created_at): the key's job, submitted now or by an earlier try."""
        built: list[tuple[JobPayload, str]] = []

        async def create() -> str:
            payload, model = await self.build_job(data)
            meta = JobMeta(model=model, created_at=payload.created_at)
            # Kept as long as the key, so a retry after a long wait still finds the result.
            await self.dispatcher.submit(payload, meta, self.settings.job_result_ttl_s)
            built.append((payload, model))
            return payload.id

        digest = "chat-" + hashlib.sha256(msgspec.json.encode(data)).hexdigest()
        job_id, _ = await self.jobs.idempotent(key, digest, create)
        if built:
            return job_id, built[0][1], built[0][0].created_at
        snap = await self.jobs.snapshot(job_id)
        return job_id, snap.meta.model, snap.meta.created_at

    async def _wait(self, job_id: str, client_gone: Callable[[], Awaitable[object]] | None, keep: bool) -> JobResult:
        """The job's result, racing the client's disconnect; the job is stopped on a timeout or
        a disconnect unless `keep`."""
        waiting = asyncio.ensure_future(self.dispatcher.wait(job_id, self.settings.request_timeout_s))
        watched: set[asyncio.Future[Any]] = {waiting}
        if client_gone is not None:
            watched.add(asyncio.ensure_future(client_gone()))
        try:
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in watched:
                future.cancel()  # no-op for the one that finished
        if waiting in done:
            try:
                return waiting.result()
            except GatewayTimeout:
                if keep:
                    raise GatewayTimeout(
                        f"job {job_id} did not finish within {self.settings.request_timeout_s:g} s; it keeps running: "
                        f"retry with the same Idempotency-Key to wait for it, or poll GET /v1/jobs/{job_id}"
                    ) from None
                await self.jobs.stop(job_id)
                error = GatewayTimeout(
                    f"job {job_id} did not finish within {self.settings.request_timeout_s:g} s and was canceled; "
                    "send an Idempotency-Key to keep it running across retries, or use POST /v1/jobs"
                )
                # A retry would run the same work again into the same deadline: tell SDKs not to.
                error.headers["x-should-retry"] = "false"
                raise error from None
        if not keep:
            await self.jobs.stop(job_id)
        raise InvalidRequest("the client closed the connection before the answer", code="client_disconnected")

    async def stream(self, data: ChatCompletionRequest) -> AsyncIterator[bytes]:
        """The SSE events of a streamed completion. The job is enqueued before the response
        starts, so a full queue is still a plain 503, not an event."""
        payload, model = await self.build_job(data)
        meta = JobMeta(model=model, created_at=payload.created_at)
        await self.dispatcher.submit(payload, meta, self.settings.result_ttl_s)
        include_usage = bool(data.stream_options and data.stream_options.include_usage)
        events = ChatStream(self.settings, self.dispatcher.blocking_redis, self.jobs, payload, model, include_usage)
        return events.events()

    async def generate(
        self, data: GenerateRequest, client_gone: Callable[[], Awaitable[object]] | None = None
    ) -> GenerateResponse:
        """The seeds' /generate: a raw prompt, no chat template, TGI's response shape; its job is
        stopped when the client leaves or the wait times out, as chat's without a key."""
        started = time.perf_counter()
        refuse_long_prompt(len(data.inputs), self.settings.input_char_limit, "inputs")
        params = generate_params(data.parameters, self.settings)
        payload = JobPayload(
            id=uuid.uuid4().hex, kind="generate", prompt=data.inputs, params=params, created_at=time.time()
        )
        meta = JobMeta(model=self.settings.model_name, created_at=payload.created_at)
        await self.dispatcher.submit(payload, meta, self.settings.result_ttl_s)
        with failures_logged("generate", payload.id):
            result = await self._wait(payload.id, client_gone, keep=False)
        log_success("generate", payload.id, time.perf_counter() - started, self.settings.model_name, result, params)
        text = data.inputs + result.text if data.parameters and data.parameters.return_full_text else result.text
        details = None
        if data.parameters and data.parameters.details:
            details = GenerateDetails(
                finish_reason=result.finish_reason,
                generated_tokens=result.completion_tokens,
                prompt_tokens=result.prompt_tokens,
                seed=result.seed,
            )
        return GenerateResponse(generated_text=text, details=details)
