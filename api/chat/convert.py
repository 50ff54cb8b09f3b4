"""A validated request becomes a job: the model contract, refusals, parameters, messages.

The schema (api.chat.protocol) has already checked types and ranges; this adds the rules that need
the settings (model names, the max_tokens clamp, defaults) and the ones OpenAI states in prose.
"""

from __future__ import annotations

from collections.abc import Sequence

from api.chat.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    GenerateParameters,
    ImageContent,
    ImageURL,
    ImageURLContent,
    TextContent,
)
from api.intake.images import ImageRef
from shared.contract import ImagePart, Message, Part, SamplingParams, TextPart
from shared.errors import InvalidRequest, ModelNotFound
from shared.prompt import refuse_long_prompt
from shared.settings import Settings


def check_model(requested: str | None, settings: Settings) -> str:
    """The seeds' model-name contract: omitted means MODEL_NAME; otherwise it must match."""
    if requested is None or requested == "":
        return settings.model_name
    if requested not in settings.served_model_names:
        raise ModelNotFound(
            f"The model `{requested}` does not exist; this server serves `{settings.model_name}`", param="model"
        )
    return requested


def check_size(messages: Sequence[ChatMessage], settings: Settings) -> None:
    """Messages, parts and text within bounds: counted on the decoded request, before anything
    is fetched, stored, rendered or enqueued (the body's size was bounded before decoding)."""
    if len(messages) > settings.max_messages:
        raise InvalidRequest(
            f"{len(messages)} messages; at most {settings.max_messages} are accepted (MAX_MESSAGES)",
            param="messages",
            code="too_many_messages",
        )
    parts = chars = 0
    for message in messages:
        if isinstance(message.content, str):
            chars += len(message.content)
        elif message.content is not None:
            parts += len(message.content)
            chars += sum(len(p.text) for p in message.content if isinstance(p, TextContent))
    if parts > settings.max_content_parts:
        raise InvalidRequest(
            f"{parts} content parts; at most {settings.max_content_parts} are accepted (MAX_CONTENT_PARTS)",
            param="messages",
            code="too_many_content_parts",
        )
    refuse_long_prompt(chars, settings.input_char_limit, "messages")


def refuse_unsupported(req: ChatCompletionRequest) -> None:
    if req.n is not None and req.n != 1:
        raise InvalidRequest("only n=1 is supported", param="n")
    if req.stream_options is not None and not req.stream:
        raise InvalidRequest("stream_options is only allowed with stream=true", param="stream_options")
    if req.logprobs or req.top_logprobs:
        raise InvalidRequest("logprobs are not supported", param="logprobs")
    if req.tools:
        raise InvalidRequest("tools are not supported", param="tools")
    if req.response_format is not None and req.response_format.type != "text":
        raise InvalidRequest("only response_format type 'text' is supported", param="response_format")


def _stops(stop: str | list[str] | None, param: str) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(s == "" for s in stops):
        raise InvalidRequest("stop strings must not be empty", param=param)
    return tuple(dict.fromkeys(stops))


def _max_new(requested: int | None, min_new: int | None, settings: Settings, param: str) -> tuple[int, int]:
    """(max_new_tokens, min_new_tokens): requests are clamped to the server's default, as the
    seeds say; a min above the resulting max is refused rather than silently changed."""
    cap = settings.max_new_tokens_default
    max_new = min(requested or cap, cap)
    minimum = 1 if min_new is None else min_new
    if min_new is not None and min_new > max_new:
        raise InvalidRequest(
            f"min_tokens ({min_new}) exceeds the number of new tokens allowed ({max_new})", param=param
        )
    return max_new, min(minimum, max_new)


def sampling_params(
    settings: Settings,
    *,
    max_new: int | None,
    min_new: int | None,
    min_param: str,
    stop: str | list[str] | None,
    stop_param: str,
    do_sample: bool,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    repetition_penalty: float | None,
    seed: int | None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    length_penalty: float | None = None,
) -> SamplingParams:
    """A request's sampling values over the server defaults: one resolution for both endpoints
    (`min_param`/`stop_param` name the fields in the caller's request, for error messages)."""
    max_new_tokens, min_new_tokens = _max_new(max_new, min_new, settings, min_param)
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=do_sample,
        temperature=temperature if temperature is not None else settings.temperature_default,
        top_p=top_p if top_p is not None else settings.top_p_default,
        top_k=max(top_k if top_k is not None else settings.top_k_default, 0),
        repetition_penalty=repetition_penalty or settings.repetition_penalty_default,
        presence_penalty=presence_penalty or 0.0,
        frequency_penalty=frequency_penalty or 0.0,
        length_penalty=length_penalty if length_penalty is not None else 1.0,
        seed=seed if seed is not None else settings.seed_default,
        stop=_stops(stop, stop_param),
    )


def chat_params(req: ChatCompletionRequest, settings: Settings) -> SamplingParams:
    """OpenAI semantics: temperature 0 means greedy; otherwise DO_SAMPLE_DEFAULT decides."""
    return sampling_params(
        settings,
        max_new=req.max_completion_tokens or req.max_tokens,
        min_new=req.min_tokens,
        min_param="min_tokens",
        stop=req.stop,
        stop_param="stop",
        do_sample=req.temperature > 0 if req.temperature is not None else settings.do_sample_default,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        repetition_penalty=req.repetition_penalty,
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        length_penalty=req.length_penalty,
    )


def generate_params(params: GenerateParameters | None, settings: Settings) -> SamplingParams:
    """TGI semantics: greedy unless `do_sample` is true."""
    p = params or GenerateParameters()
    return sampling_params(
        settings,
        max_new=p.max_new_tokens,
        min_new=p.min_new_tokens,
        min_param="parameters.min_new_tokens",
        stop=p.stop,
        stop_param="parameters.stop",
        do_sample=bool(p.do_sample),
        temperature=p.temperature,
        top_p=p.top_p,
        top_k=p.top_k,
        repetition_penalty=p.repetition_penalty,
        seed=p.seed,
    )


def image_refs(messages: Sequence[ChatMessage]) -> list[ImageRef]:
    """Every image in the request, in order, with its place for error messages."""
    refs = []
    for i, message in enumerate(messages):
        if not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            where = f"messages[{i}].content[{j}]"
            if isinstance(part, ImageContent):
                refs.append(ImageRef(part.image, f"{where}.image"))
            elif isinstance(part, ImageURLContent):
                url = part.image_url.url if isinstance(part.image_url, ImageURL) else part.image_url
                refs.append(ImageRef(url, f"{where}.image_url"))
    return refs


def job_messages(messages: Sequence[ChatMessage], digests: Sequence[str]) -> tuple[Message, ...]:
    """The job's messages: images replaced, in order, by the digests of their stored blobs."""
    pending = iter(digests)
    out = []
    for message in messages:
        role = "system" if message.role == "developer" else message.role
        parts: list[Part] = []
        if isinstance(message.content, str) or message.content is None:
            parts.append(TextPart(message.content or ""))
        else:
            for part in message.content:
                parts.append(TextPart(part.text) if isinstance(part, TextContent) else ImagePart(next(pending)))
        out.append(Message(role, tuple(parts)))
    return tuple(out)
