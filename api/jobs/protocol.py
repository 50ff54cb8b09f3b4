"""The jobs slice's wire types: POST /v1/jobs takes a chat request, GET/DELETE answer a job object."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from api.chat.protocol import ChatCompletion, ChatCompletionRequest
from shared.contract import CancelReason, JobStatus, Priority

# OpenAI's bounds on `metadata` (16 pairs, 64-character keys, 512-character values): what one
# client can make the service store per job.
Metadata = Annotated[
    dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]], Meta(max_length=16)
]


class JobCreateRequest(ChatCompletionRequest, kw_only=True):
    """POST /v1/jobs: a chat completion request, plus when to give up and how urgent it is."""

    expires_after: Annotated[float, Meta(gt=0, le=30 * 86400)] | None = None
    priority: Priority = "interactive"
    metadata: Metadata | None = None


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class JobObject(msgspec.Struct, kw_only=True):
    id: str
    status: JobStatus
    created_at: int
    model: str
    priority: str
    poll_url: str
    object: str = "job"
    expires_at: int | None = None
    started_at: int | None = None
    finished_at: int | None = None
    queue_position: int | None = None
    estimated_wait_seconds: float | None = None
    result: ChatCompletion | None = None
    error: ErrorDetail | None = None
    metadata: dict[str, str] = {}
    # DELETE only: what the cancellation did.
    cancellation: CancelReason | None = None
