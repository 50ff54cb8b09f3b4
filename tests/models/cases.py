"""Requests and images the family matrix sends, and how two outputs are compared."""

from __future__ import annotations

import io
import itertools
import time
from typing import Any

import msgspec
import numpy as np
from PIL import Image

from shared.contract import ImagePart, JobPayload, Message, SamplingParams, TextPart
from workers.engine import RowOutput

_ids = itertools.count()


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    """Seeded noise: every patch differs, so a wrong grid or patch order changes the output."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


# Mixed sizes and aspect ratios: different grids, tile counts and token counts per image.
WIDE = noise_image(64, 48, 1)
TALL = noise_image(30, 90, 2)
SQUARE = noise_image(48, 48, 3)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def job(text: str, images: int = 0, *, system: str | None = None, stream: bool = False, **params: Any) -> JobPayload:
    params.setdefault("max_new_tokens", 10)
    parts = tuple(ImagePart(f"img{i}") for i in range(images)) + (TextPart(text),)
    messages = ((Message("system", (TextPart(system),)),) if system else ()) + (Message("user", parts),)
    return JobPayload(
        id=f"m{next(_ids)}", messages=messages, params=SamplingParams(**params), created_at=time.time(), stream=stream
    )


def essence(rows: list[RowOutput]) -> list[tuple[object, ...]]:
    """What must be identical alone and batched; timings are not."""
    return [(r.text, r.finish_reason, r.prompt_tokens, r.completion_tokens, r.seed) for r in rows]


def with_blobs(payload: JobPayload, blobs: list[str]) -> JobPayload:
    """The job with its image parts pointing at stored blobs, in order."""
    digests = iter(blobs)
    messages = tuple(
        msgspec.structs.replace(
            m, content=tuple(ImagePart(next(digests)) if isinstance(p, ImagePart) else p for p in m.content)
        )
        for m in payload.messages
    )
    return msgspec.structs.replace(payload, messages=messages)
