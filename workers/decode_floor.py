"""How small a JPEG may be decoded for the loaded model's image processor (shared/images.py
`DecodeFloor`): only for processors that resize the whole image to one size, whose need is
plain from their config. Processors that tile, split or choose a resolution per image
(LLaVA-NeXT's grid, Idefics3's splitting, Qwen2-VL's pixel budget, Mllama's tiles, ...) get
no floor: their images are decoded as before (longest side at most MAX_IMAGE_SIZE).

Why: a 512x384 photo for a 336 px model, or a 4000x3000 one for anything, costs its full
decode and then a resize of every pixel in the processor, per request, on the worker's CPU;
measured on the demo model that is most of a VLM request's preparation (BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any

from shared.images import DecodeFloor


def _size(sizes: Any, key: str) -> int:
    value = sizes.get(key) if isinstance(sizes, dict) else getattr(sizes, key, None)
    return int(value) if isinstance(value, int | float) and value > 0 else 0


def decode_floor(processor: Any) -> DecodeFloor | None:
    """The floor for `processor`'s image processor, or None where its need is not plain."""
    image = getattr(processor, "image_processor", None)
    if image is None or not getattr(image, "do_resize", False):
        return None
    name = type(image).__name__.removesuffix("Fast")
    sizes = getattr(image, "size", None)
    if name == "CLIPImageProcessor" and _size(sizes, "shortest_edge"):
        return DecodeFloor(shortest_edge=_size(sizes, "shortest_edge"))
    fixed = name in ("SiglipImageProcessor", "Gemma3ImageProcessor") and not getattr(image, "do_pan_and_scan", False)
    if fixed and _size(sizes, "height") and _size(sizes, "width"):
        return DecodeFloor(side=max(_size(sizes, "height"), _size(sizes, "width")))
    return None
