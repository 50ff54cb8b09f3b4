"""Which image processors get a decode floor (workers/decode_floor.py): only those that resize
the whole image to one size; the ones that tile, split or pick a resolution per image decode the
image whole, as before. Real transformers image processors, built from their configs."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import transformers
from PIL import Image

from shared.blob_local import LocalBlobStore
from shared.blobstore import put_image
from shared.images import DecodeFloor
from shared.settings_sources import load_settings
from workers.decode_floor import decode_floor
from workers.images import ImageLoader


def _processor(name: str, **config: Any) -> SimpleNamespace:
    # What the worker hands over is a processor whose `image_processor` is one of these.
    return SimpleNamespace(image_processor=getattr(transformers, name)(**config))


def test_a_shortest_edge_resize_keeps_that_edge() -> None:
    clip = _processor("CLIPImageProcessor", size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    assert decode_floor(clip) == DecodeFloor(shortest_edge=336)


@pytest.mark.parametrize("name", ["SiglipImageProcessor", "Gemma3ImageProcessor"])
def test_a_fixed_box_keeps_its_larger_side(name: str) -> None:
    assert decode_floor(_processor(name, size={"height": 224, "width": 448})) == DecodeFloor(side=448)


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("Qwen2VLImageProcessor", {}),  # a pixel budget per image
        ("LlavaNextImageProcessor", {}),  # a grid of tiles at a higher resolution
        ("Idefics3ImageProcessor", {}),  # image splitting
        ("Gemma3ImageProcessor", {"do_pan_and_scan": True}),  # crops at the full resolution
        ("CLIPImageProcessor", {"do_resize": False}),
    ],
)
def test_processors_whose_need_is_not_plain_get_no_floor(name: str, config: dict[str, Any]) -> None:
    assert decode_floor(_processor(name, **config)) is None


def test_a_text_only_model_has_none() -> None:
    assert decode_floor(SimpleNamespace()) is None


@pytest.mark.parametrize(("reduced", "size"), [("true", (256, 192)), ("false", (1024, 768))])
def test_the_worker_loads_images_at_the_floor_unless_told_not_to(tmp_path: Path, reduced: str, size: tuple[int, int]) -> None:
    store = LocalBlobStore(tmp_path)
    buf = io.BytesIO()
    Image.new("RGB", (2048, 1536), (10, 120, 200)).save(buf, "JPEG")
    digest = put_image(store, buf.getvalue())
    settings = load_settings(environ={"IMAGE_REDUCED_DECODE": reduced, "MAX_IMAGE_SIZE": "1024"})
    loader = ImageLoader(store, settings, floor=DecodeFloor(shortest_edge=32))
    image = loader.load_many([digest])[digest]
    assert isinstance(image, Image.Image) and image.size == size
