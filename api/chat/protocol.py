"""The chat slice's wire types (OpenAI chat completions, its stream chunks, and the seeds' / TGI's
/generate), field for field. The message parts and `ChatCompletionRequest` / `ChatCompletion`
are shared: jobs, batch lines and /v1/apply_template take the same messages and answer the same
completion, so they import them from here.

Requests ignore unknown fields on purpose: OpenAI clients send fields we do not use and must not
be refused for it. Fields whose meaning we cannot honour (n > 1, logprobs, tools, json modes)
are refused with a clear 400 in `api.chat.convert` instead of being silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

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


# --- stream chunks (stream=true: one `data:` event each) ---------------------------------------
class ChoiceDelta(msgspec.Struct, omit_defaults=True):
    """What a chunk adds: the role once, then text (an empty delta closes the choice)."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: ChoiceDelta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    """OpenAI's `chat.completion.chunk`. `usage` is absent unless the client asked for it with
    stream_options.include_usage; then it is null on every chunk but the last, which carries it
    with no choices."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | UnsetType | None = UNSET


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
