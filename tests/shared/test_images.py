"""Image rules: format allow-list, pixel cap, EXIF orientation, first frame, resize."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.images import DecodeFloor, ImageRejected, decode_image, probe_image
from tests.support.images import image_bytes, pixel_bomb


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_allowed_formats(fmt: str) -> None:
    assert probe_image(image_bytes(fmt, (40, 30)), max_pixels=10_000) == (fmt, 40, 30)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "ICO", "PPM", "TGA"])
def test_refused_formats(fmt: str) -> None:
    with pytest.raises(ImageRejected) as err:
        probe_image(image_bytes(fmt, (16, 16)), max_pixels=10_000)
    assert err.value.status_code == 400


def test_not_an_image_and_empty() -> None:
    for data in (b"", b"hello", b"\x89PNG\r\n\x1a\n garbage"):
        with pytest.raises(ImageRejected):
            probe_image(data, max_pixels=10_000)


def test_pixel_cap() -> None:
    with pytest.raises(ImageRejected) as err:
        probe_image(image_bytes("PNG", (101, 100)), max_pixels=10_000)
    assert err.value.code == "image_too_large"
    with pytest.raises(ImageRejected):
        probe_image(pixel_bomb(), max_pixels=40_000_000)


def test_resize_keeps_aspect_and_converts_to_rgb() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (2000, 500), (0, 0, 0, 0)).save(buf, "PNG")
    img = decode_image(buf.getvalue(), max_side=1024, max_pixels=10**8)
    assert img.size == (1024, 256) and img.mode == "RGB"
    small = decode_image(image_bytes("JPEG", (300, 200)), max_side=1024, max_pixels=10**8)
    assert small.size == (300, 200)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (60, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert decode_image(buf.getvalue(), max_side=1024, max_pixels=10**8).size == (20, 60)


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    img = decode_image(buf.getvalue(), max_side=64, max_pixels=10**6)
    r, g, _ = img.getpixel((5, 5))  # type: ignore[misc]
    assert r > 200 and g < 50


def test_truncated_data_is_rejected_at_decode() -> None:
    data = image_bytes("PNG", (200, 200))
    probe_image(data[: len(data) // 2], max_pixels=10**6)  # the header alone looks fine
    with pytest.raises(ImageRejected) as err:
        decode_image(data[: len(data) // 2], max_side=64, max_pixels=10**6)
    assert err.value.code == "invalid_image"


def _photo(size: tuple[int, int]) -> bytes:
    """A JPEG with detail a model would see: a texture of 40 px period over a gradient (decoded
    below the processor's size, or decimated without filtering, it moves the processor's output
    by 0.04-0.05 on average; the floor's decode by 0.007)."""
    x, y = np.arange(size[0])[None, :], np.arange(size[1])[:, None]
    base = 128 + 60 * np.sin(2 * np.pi * x / 40) * np.cos(2 * np.pi * y / 52) + 40 * x / size[0]
    pixels = np.stack([base, 255 - base, (base + y * 0.05) % 255], axis=2).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_a_jpeg_is_decoded_no_larger_than_its_floor_needs_but_never_below_it() -> None:
    data = _photo((2048, 1536))
    full = decode_image(data, max_side=4096, max_pixels=10**8)
    assert full.size == (2048, 1536)
    # A 336 px CLIP-style resize needs the shortest side at 2 x 336 = 672: libjpeg's 1/2 scale.
    reduced = decode_image(data, max_side=4096, max_pixels=10**8, floor=DecodeFloor(shortest_edge=336))
    assert reduced.size == (1024, 768)
    # A 32 px model: the smallest scale libjpeg has (1/8) still keeps 2 x 32 on the short side.
    tiny = decode_image(data, max_side=4096, max_pixels=10**8, floor=DecodeFloor(shortest_edge=32))
    assert tiny.size == (256, 192)
    # A fixed box (SigLIP): square, since the EXIF orientation is applied after the decode.
    boxed = decode_image(data, max_side=4096, max_pixels=10**8, floor=DecodeFloor(side=224))
    assert min(boxed.size) >= 448 and boxed.size == (1024, 768)
    # MAX_IMAGE_SIZE still rules where the floor asks for more than it allows.
    capped = decode_image(data, max_side=512, max_pixels=10**8, floor=DecodeFloor(shortest_edge=1024))
    assert max(capped.size) == 512
    # Not a JPEG: decoded whole, as before (only libjpeg scales while it decodes).
    png = io.BytesIO()
    Image.open(io.BytesIO(data)).save(png, "PNG")
    assert decode_image(png.getvalue(), max_side=4096, max_pixels=10**8, floor=DecodeFloor(shortest_edge=32)).size == (
        2048,
        1536,
    )


def test_what_the_processor_makes_of_a_reduced_decode_is_what_it_makes_of_the_full_one() -> None:
    """The model sees (nearly) the same pixels: the processor's own resize from at least twice its
    output size, as Pillow's thumbnail(reducing_gap=2) does."""
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    data = _photo((1600, 1200))
    full = decode_image(data, max_side=4096, max_pixels=10**8)
    reduced = decode_image(data, max_side=4096, max_pixels=10**8, floor=DecodeFloor(shortest_edge=224))
    assert reduced.size == (800, 600)  # 1/2: 1/4 would leave 300 < 2 x 224 on the short side
    a = processor(full, return_tensors="pt")["pixel_values"]
    b = processor(reduced, return_tensors="pt")["pixel_values"]
    assert a.shape == b.shape
    # Normalised pixel values span about 4 units.
    assert float((a - b).abs().mean()) < 0.02, float((a - b).abs().mean())
