"""Image rules both sides apply: which formats, how many pixels, how an image is normalised.

The API probes headers only (cheap, before anything is stored or queued); the worker decodes,
applies EXIF orientation, takes the first frame and resizes the longest side to MAX_IMAGE_SIZE.
Both refuse the same things, so a blob that was tampered with in storage is still checked.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import InvalidRequest

# GIF and WEBP may be animated; the first frame is used.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP"})


class ImageRejected(InvalidRequest):
    """An image the service will not process; the message says why."""


# Signatures of common formats we refuse, only to name them in the error message: Pillow is never
# asked to parse them (fewer parsers exposed to untrusted bytes).
_REFUSED_SIGNATURES = (
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"<svg", "SVG"),
    (b"<?xml", "SVG/XML"),
)
_REFUSED_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}


def _refused_format(data: bytes) -> str | None:
    for signature, name in _REFUSED_SIGNATURES:
        if data.startswith(signature):
            return name
    if data[4:8] == b"ftyp":
        return _REFUSED_BRANDS.get(data[8:12], "ISO media")
    return None


def probe_image(
    data: bytes, *, max_pixels: int, param: str | None = None, max_aspect: float | None = None
) -> tuple[str, int, int]:
    """(format, width, height) from the header, or ImageRejected. Does not decode pixels.

    `max_aspect` bounds longest side / shortest side: a 1 x 40,000,000 strip passes a pixel cap
    yet costs the worker as much memory as a 6,000 x 6,000 photo, and VLM resizers refuse it.
    """
    allowed = ", ".join(sorted(ALLOWED_FORMATS))
    refused = _refused_format(data)
    if refused:
        raise ImageRejected(
            f"image format {refused} is not allowed (allowed: {allowed})", param=param, code="unsupported_image_format"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS)) as img:
                fmt, (width, height) = str(img.format), img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(
            f"image has more than MAX_IMAGE_PIXELS={max_pixels} pixels", param=param, code="image_too_large"
        ) from None
    except UnidentifiedImageError:
        raise ImageRejected(
            f"the data is not an image in a supported format ({allowed})", param=param, code="invalid_image"
        ) from None
    except Exception:  # a malformed header can raise almost anything inside a Pillow plugin
        raise ImageRejected("the image header could not be read", param=param, code="invalid_image") from None
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise ImageRejected(
            f"image is {width}x{height} pixels, more than MAX_IMAGE_PIXELS={max_pixels}",
            param=param,
            code="image_too_large",
        )
    if max_aspect is not None and max(width, height) > max_aspect * min(width, height):
        raise ImageRejected(
            f"image is {width}x{height} pixels, an aspect ratio over MAX_IMAGE_ASPECT_RATIO={max_aspect:g}:1",
            param=param,
            code="image_aspect_ratio",
        )
    return fmt, width, height


@dataclass(frozen=True)
class DecodeFloor:
    """The least a model's image processor needs of a decoded image, so that a JPEG can be
    decoded at a reduced scale (libjpeg's 1/2, 1/4, 1/8: far less work than the full image
    and a resize) and still feed the processor's own resize from at least `gap` times its
    output: the rule of Pillow's `thumbnail(reducing_gap=2)`, whose quality it keeps.

    `shortest_edge`: the processor scales the shortest side to it (CLIP's resize and crop);
    `side`: it resizes to a fixed box whose larger side is this (SigLIP, Gemma 3). Both are
    read before EXIF orientation, so a box is kept square: a rotated photo needs as much.
    """

    shortest_edge: int = 0
    side: int = 0
    gap: float = 2.0

    def box(self, width: int, height: int) -> tuple[int, int]:
        """The smallest (width, height) a reduced decode of a width x height image may have."""
        if self.shortest_edge:
            scale = self.shortest_edge * self.gap / max(1, min(width, height))
            return math.ceil(width * scale), math.ceil(height * scale)
        side = math.ceil(self.side * self.gap)
        return side, side


def decode_image(
    data: bytes,
    *,
    max_side: int,
    max_pixels: int,
    max_aspect: float | None = None,
    floor: DecodeFloor | None = None,
) -> Image.Image:
    """Decoded RGB image: header re-checked, EXIF orientation applied, longest side <= max_side;
    a JPEG is decoded at the smallest scale that keeps `floor` (what the model's processor needs)."""
    probe_image(data, max_pixels=max_pixels, max_aspect=max_aspect)
    try:
        opened = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
        if opened.format == "JPEG":
            # Let libjpeg decode at a reduced scale when the target is much smaller: far faster.
            # `draft` keeps at least the size asked for on both sides.
            box = (max_side, max_side)
            if floor is not None:
                need = floor.box(*opened.size)
                box = (min(box[0], need[0]), min(box[1], need[1]))
            opened.draft("RGB", box)
        opened.seek(0)
        img = ImageOps.exif_transpose(opened).convert("RGB")
    except Exception:  # truncated or corrupt data past a valid header
        raise ImageRejected("the image data is corrupt or truncated", code="invalid_image") from None
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return img
