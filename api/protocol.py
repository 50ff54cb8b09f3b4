"""OpenAI (and seeds / TGI) wire types, field for field.

Requests ignore unknown fields on purpose: OpenAI clients send fields we do not use and must not
be refused for it. Fields whose meaning we cannot honour (n > 1, logprobs, tools, json modes)
are refused with a clear 400 in `api.convert` instead of being silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

MAX_STOP_STRINGS = 16
SEED_MAX = 2**63 - 1
# Token counts and top_k: any larger value means "no limit" to the worker anyway; the bound keeps
# 2**64 and beyond (which JSON allows) out of msgpack, Redis and torch, as a 400.
INT32_MAX = 2**31 - 1


# --- chat request -------------------------------------------------------------------------
class TextContent(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class ImageContent(msgspec.Struct, tag_field="type", tag="image"):
    """The seeds' image part: {"type": "image", "image": URL or data URL}."""

    image: str


class ImageURL(msgspec.Struct):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImageURLContent(msgspec.Struct, tag_field="type", tag="image_url"):
    """OpenAI's image part; `image_url` may also be a bare string (vLLM accepts both)."""

    image_url: str | ImageURL


ContentPart = TextContent | ImageContent | ImageURLContent


class ChatMessage(msgspec.Struct):
    # "developer" is OpenAI's newer name for the system role.
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ResponseFormat(msgspec.Struct):
    type: str = "text"


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    model: str | None = None
    max_tokens: Annotated[int, Meta(ge=1, le=INT32_MAX)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1, le=INT32_MAX)] | None = None
    min_tokens: Annotated[int, Meta(ge=0, le=INT32_MAX)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=-1, le=INT32_MAX)] | None = None
    repetition_penalty: Annotated[float, Meta(gt=0, le=2)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    length_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    seed: Annotated[int, Meta(ge=0, le=SEED_MAX)] | None = None
    stop: str | Annotated[list[str], Meta(max_length=MAX_STOP_STRINGS)] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: ResponseFormat | None = None
    user: str | None = None


# --- chat response ------------------------------------------------------------------------
class ResponseMessage(msgspec.Struct):
    role: str
    content: str


class Choice(msgspec.Struct):
    index: int
    message: ResponseMessage
    finish_reason: str
    logprobs: None = None


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ServiceInfo(msgspec.Struct):
    """How the service ran the request (not in OpenAI's schema; clients ignore it)."""

    job_id: str
    queue_seconds: float
    generation_seconds: float
    batch_id: str
    batch_size: int
    seed: int | None
    time_to_first_token_seconds: float | None = None
    truncated_prompt_tokens: int = 0


class ChatCompletion(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    latency_seconds: float
    service: ServiceInfo
    object: str = "chat.completion"
    system_fingerprint: str | None = None


# --- /generate (the seeds' simple generation, TGI's shape) -----------------------------------
class GenerateParameters(msgspec.Struct, kw_only=True):
    max_new_tokens: Annotated[int, Meta(ge=1, le=INT32_MAX)] | None = None
    min_new_tokens: Annotated[int, Meta(ge=0, le=INT32_MAX)] | None = None
    do_sample: bool | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=-1, le=INT32_MAX)] | None = None
    repetition_penalty: Annotated[float, Meta(gt=0, le=2)] | None = None
    seed: Annotated[int, Meta(ge=0, le=SEED_MAX)] | None = None
    stop: Annotated[list[str], Meta(max_length=MAX_STOP_STRINGS)] | None = None
    details: bool = False
    return_full_text: bool = False


class GenerateRequest(msgspec.Struct, kw_only=True):
    inputs: Annotated[str, Meta(min_length=1)]
    parameters: GenerateParameters | None = None


class GenerateDetails(msgspec.Struct):
    finish_reason: str
    generated_tokens: int
    prompt_tokens: int
    seed: int | None


class GenerateResponse(msgspec.Struct):
    generated_text: str
    details: GenerateDetails | None = None


# --- submit-and-poll jobs -------------------------------------------------------------------
class JobCreateRequest(ChatCompletionRequest, kw_only=True):
    """POST /v1/jobs: a chat completion request, plus when to give up and how urgent it is."""

    expires_after: Annotated[float, Meta(gt=0, le=30 * 86400)] | None = None
    priority: Literal["interactive", "batch"] = "interactive"
    metadata: dict[str, str] | None = None


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class JobObject(msgspec.Struct, kw_only=True):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled", "expired"]
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
    cancellation: (
        Literal["canceled_before_start", "stopped_while_running", "finished_before_cancel", "cancel_requested"] | None
    ) = None


# --- templates, models --------------------------------------------------------------------
class ApplyTemplateRequest(msgspec.Struct, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    model: str | None = None


class ApplyTemplateResponse(msgspec.Struct):
    prompt: str
    model: str


class ModelObject(msgspec.Struct):
    id: str
    created: int
    owned_by: str = "omega-vlm"
    object: str = "model"


class ModelList(msgspec.Struct):
    data: list[ModelObject]
    object: str = "list"
