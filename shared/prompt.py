"""Chat-template rendering shared by the API (`/v1/apply_template`) and the workers.

Both sides call `render_prompt` with the template and special tokens the worker published in its
ModelCard, so the API's answer is exactly the text the worker feeds the processor. Rendering uses
transformers' own Jinja environment (it does not import torch), not a hand-written copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.contract import ImagePart, Message, TextPart
from shared.errors import InvalidRequest


def template_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages in the shape HF chat templates expect.

    A turn with only text becomes a plain string, which text-only templates require and every
    VLM template we know accepts; a turn with images keeps typed parts so the template can place
    the image placeholders.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        if not message.images:
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


def render_prompt(chat_template: str, template_kwargs: Mapping[str, str], messages: Sequence[Message]) -> str:
    """The prompt text for `messages`, with the generation prompt appended."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(
            conversations=[template_messages(messages)],
            chat_template=chat_template,
            add_generation_prompt=True,
            **dict(template_kwargs),
        )
    except Exception as exc:  # jinja2 errors, raise_exception() calls inside the template
        # Templates reject conversations they cannot format (e.g. roles out of order) this way.
        raise InvalidRequest(f"the model's chat template rejected the messages: {exc}", param="messages") from None
    return str(rendered[0])
