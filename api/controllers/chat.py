"""POST /v1/chat/completions: the OpenAI-compatible synchronous path."""

from __future__ import annotations

import time
import uuid

from litestar import Controller, post
from litestar.di import Provide

from api.auth import require_api_key
from api.convert import chat_params, check_model, image_refs, job_messages, refuse_unsupported
from api.protocol import ChatCompletion, ChatCompletionRequest, Choice, ResponseMessage, ServiceInfo, Usage
from api.request_log import log_success
from api.services import Services, get_services
from shared.contract import JobMeta, JobPayload, JobResult


def completion(job_id: str, model: str, result: JobResult, latency_s: float) -> ChatCompletion:
    return ChatCompletion(
        id=f"chatcmpl-{job_id}",
        created=int(time.time()),
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
            batch_id=result.batch_id,
            batch_size=result.batch_size,
            seed=result.seed,
            time_to_first_token_seconds=result.first_token_seconds,
            truncated_prompt_tokens=result.truncated_prompt_tokens,
        ),
    )


async def chat_payload(
    data: ChatCompletionRequest, svc: Services, *, check_capacity: bool = True, expires_after: float | None = None
) -> tuple[JobPayload, str]:
    """Validate, store the images, and build the job; nothing is enqueued here."""
    settings = svc.settings
    model = check_model(data.model, settings)
    refuse_unsupported(data)
    params = chat_params(data, settings)
    refs = image_refs(data.messages)
    svc.intake.check_refs(refs)
    if check_capacity:
        await svc.fleet.choose()  # full or no workers: refuse before fetching and storing anything
    digests = await svc.intake.store_all(refs)
    now = time.time()
    payload = JobPayload(
        id=uuid.uuid4().hex,
        kind="chat",
        messages=job_messages(data.messages, digests),
        params=params,
        created_at=now,
        expires_at=now + expires_after if expires_after is not None else None,
    )
    return payload, model


class ChatController(Controller):
    path = "/v1/chat/completions"
    tags = ["chat"]
    guards = [require_api_key]
    dependencies = {"svc": Provide(get_services, sync_to_thread=False)}

    @post("", status_code=200, summary="Create a chat completion (OpenAI-compatible)")
    async def create(self, data: ChatCompletionRequest, svc: Services) -> ChatCompletion:
        started = time.perf_counter()
        payload, model = await chat_payload(data, svc)
        result = await svc.dispatcher.run(payload, JobMeta(model=model, created_at=payload.created_at))
        latency = time.perf_counter() - started
        log_success("chat", payload.id, latency, model, result, payload.params)
        return completion(payload.id, model, result, latency)
