"""Chat requests become jobs, and job results become `chat.completion` objects.

Shared by the synchronous endpoint, submit-and-poll jobs and batch lines, so all three answer
the same request with the same job and the same completion.
"""

from __future__ import annotations

import time
import uuid

from api.convert import chat_params, check_model, image_refs, job_messages, refuse_unsupported
from api.fleet_view import FleetView
from api.image_intake import ImageIntake
from api.protocol import ChatCompletion, ChatCompletionRequest, Choice, ResponseMessage, ServiceInfo, Usage
from shared.contract import JobPayload, JobResult
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
) -> tuple[JobPayload, str]:
    """Validate, store the images, and build the job (nothing is enqueued here).

    With `fleet`, capacity is checked first: a full or worker-less service refuses before any
    image is fetched or stored. With `streaming`, the worker publishes the text as it grows
    (only a caller that reads it asks: jobs and batch lines are answered whole). Returns the job
    and the model name to answer with.
    """
    model = check_model(data.model, settings)
    refuse_unsupported(data)
    params = chat_params(data, settings)
    refs = image_refs(data.messages)
    intake.check_refs(refs)
    if fleet is not None and refs:
        # Refuse a full or worker-less service before fetching and storing any image (the
        # enqueue checks again; a text-only request needs only that one check).
        await fleet.check_room()
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
            batch_id=result.batch_id,
            batch_size=result.batch_size,
            seed=result.seed,
            time_to_first_token_seconds=result.first_token_seconds,
            truncated_prompt_tokens=result.truncated_prompt_tokens,
        ),
    )
