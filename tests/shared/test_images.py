"""Image rules: format allow-list, pixel cap, EXIF orientation, first frame, resize."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from shared.images import ImageRejected, decode_image, probe_image
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
