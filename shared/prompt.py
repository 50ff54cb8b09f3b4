"""Chat-template rendering shared by the API (`/v1/apply_template`) and the workers.

Both sides call `render_prompt` with the template and special tokens the worker published in its
ModelCard, so the API's answer is exactly the text the worker feeds the processor. Rendering uses
transformers' own Jinja environment (it does not import torch), not a hand-written copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from shared.contract import ImagePart, Message, TextPart
from shared.errors import InvalidRequest


def template_messages(messages: Sequence[Message], text_as_string: bool = True) -> list[dict[str, Any]]:
    """Messages in the shape HF chat templates expect.

    A turn with only text becomes a plain string (`text_as_string`), which text-only templates
    require; a turn with images keeps typed parts so the template can place the image
    placeholders. Templates that only read typed parts (Idefics3 / SmolVLM) get them always.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        if not message.images and text_as_string:
            text = "".join(p.text for p in message.content if isinstance(p, TextPart))
            out.append({"role": message.role, "content": text})
            continue
        parts: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, ImagePart):
                parts.append({"type": "image"})
            else:
                parts.append({"type": "text", "text": part.text})
        out.append({"role": message.role, "content": parts})
    return out


def refuse_long_prompt(chars: int, limit: int, param: str) -> None:
    """A prompt past `limit` characters (Settings.input_char_limit) is refused, never rendered or
    tokenized: the API checks before enqueue, the worker again before rendering."""
    if chars > limit:
        raise InvalidRequest(
            f"the prompt has {chars} characters of text; at most {limit} are accepted (MAX_INPUT_CHARS)",
            param=param,
            code="context_length_exceeded",
        )


def text_chars(messages: Sequence[Message]) -> int:
    """Characters of text in a job's messages."""
    return sum(len(p.text) for m in messages for p in m.content if isinstance(p, TextPart))


_PROBE = "omega-probe-text"


@lru_cache(maxsize=16)
def reads_string_content(chat_template: str, template_kwargs: tuple[tuple[str, str], ...]) -> bool:
    """Whether the template shows a turn whose content is a plain string. Some VLM templates
    only iterate typed parts and would silently drop such text (Idefics3 / SmolVLM)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(
            conversations=[[{"role": "user", "content": _PROBE}]],
            chat_template=chat_template,
            add_generation_prompt=True,
            **dict(template_kwargs),
        )
    except Exception:  # a template that rejects string content outright
        return False
    return _PROBE in rendered[0]


def render_prompt(chat_template: str, template_kwargs: Mapping[str, str], messages: Sequence[Message]) -> str:
    """The prompt text for `messages`, with the generation prompt appended."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        as_string = reads_string_content(chat_template, tuple(sorted(template_kwargs.items())))
        rendered, _ = render_jinja_template(
            conversations=[template_messages(messages, as_string)],
            chat_template=chat_template,
            add_generation_prompt=True,
            **dict(template_kwargs),
        )
    except Exception as exc:  # jinja2 errors, raise_exception() calls inside the template
        # Templates reject conversations they cannot format (e.g. roles out of order) this way.
        raise InvalidRequest(f"the model's chat template rejected the messages: {exc}", param="messages") from None
    return str(rendered[0])
