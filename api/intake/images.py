"""Image intake: data: or http(s) URL -> checked bytes -> content-addressed blob.

Everything cheap is checked for every image before anything is fetched (count, scheme, remote
images allowed); then images are fetched concurrently, their headers probed with Pillow (format
allow-list, pixel cap, aspect ratio, the request's pixel budget) and stored once under their
sha256. Workers decode; the API never does.
"""

from __future__ import annotations

import asyncio
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

import anyio.to_thread

from api.intake.remote_fetch import RemoteImageFetcher
from shared.blob_retention import BlobRetention
from shared.blobstore import BlobStore, put_image
from shared.errors import InvalidRequest, PayloadTooLarge
from shared.images import probe_image
from shared.settings import Settings


@dataclass(frozen=True)
class ImageRef:
    source: str  # a data: URL or an http(s) URL
    param: str  # where it sits in the request, for the error's `param`


def decode_data_url(ref: ImageRef, max_bytes: int) -> bytes:
    header, sep, payload = ref.source.partition(",")
    if not sep or not header.lower().startswith("data:"):
        raise InvalidRequest("malformed data URL", param=ref.param, code="invalid_image_url")
    if not header.lower().endswith(";base64"):
        raise InvalidRequest(
            "image data URLs must be base64-encoded (data:image/...;base64,...)",
            param=ref.param,
            code="invalid_image_url",
        )
    if len(payload) // 4 * 3 > max_bytes + 2:
        raise PayloadTooLarge(f"the image is larger than MAX_IMAGE_BYTES={max_bytes}", param=ref.param)
    try:
        # Strict: only the alphabet, padding only at the end (what b64decode(validate=True) checks
        # with a regular expression first): half the CPU of that for a large image.
        return binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("the image data URL is not valid base64", param=ref.param, code="invalid_base64") from None


class ImageIntake:
    def __init__(
        self,
        settings: Settings,
        store: BlobStore,
        fetcher: RemoteImageFetcher,
        retention: BlobRetention | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.fetcher = fetcher
        self.retention = retention  # records each reference (BLOB_TTL_S counts from the latest)

    def check_refs(self, refs: Sequence[ImageRef]) -> None:
        """Everything that can be refused without network or disk, for all images first."""
        limit = self.settings.max_images_per_request
        if len(refs) > limit:
            raise InvalidRequest(
                f"{len(refs)} images in the request; at most {limit} are allowed (MAX_IMAGES_PER_REQUEST)",
                param="messages",
                code="too_many_images",
            )
        for ref in refs:
            scheme = ref.source.split(":", 1)[0].lower() if ":" in ref.source else ""
            if scheme == "data":
                continue
            if scheme not in ("http", "https"):
                raise InvalidRequest(
                    "images must be data: URLs or http(s) URLs", param=ref.param, code="invalid_image_url"
                )
            if not self.settings.allow_remote_images:
                raise InvalidRequest(
                    "remote image URLs are disabled on this server (ALLOW_REMOTE_IMAGES=0); "
                    "send the image as a base64 data: URL",
                    param=ref.param,
                    code="remote_images_disabled",
                )

    async def store_all(self, refs: Sequence[ImageRef], *, batch_id: str | None = None) -> list[str]:
        """Digests of the stored images, in request order.

        All images are fetched and probed before any is stored, so a request over its pixel
        budget stores nothing. At most IMAGE_FETCH_PER_REQUEST are fetched at once, and a batch
        line (`batch_id`) fetches within its batch's share of the pool (api/fetch_shares.py).
        """
        self.check_refs(refs)
        slots = asyncio.Semaphore(self.settings.image_fetch_per_request)
        # Not a plain gather: when one image fails the request has failed, and its other fetches
        # are cancelled at once instead of holding pool connections (and a batch's share of the
        # pool) until their own deadlines. The first failure is the request's answer.
        loads = [asyncio.ensure_future(self._load(ref, slots, batch_id)) for ref in refs]
        try:
            if loads:  # asyncio.wait refuses an empty set (a request with no images)
                await asyncio.wait(loads, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for load in loads:
                load.cancel()  # a no-op on those that ended; also runs when this request is cancelled
        await asyncio.gather(*loads, return_exceptions=True)  # let the cancelled ones unwind
        for load in loads:
            if not load.cancelled() and (error := load.exception()) is not None:
                raise error
        probed = [load.result() for load in loads]
        self._check_budget(refs, [pixels for _, pixels in probed])
        stored = (anyio.to_thread.run_sync(put_image, self.store, data, self.retention) for data, _ in probed)
        return list(await asyncio.gather(*stored))

    def _check_budget(self, refs: Sequence[ImageRef], pixels: Sequence[int]) -> None:
        budget = self.settings.max_request_pixels
        total = 0
        for ref, count in zip(refs, pixels, strict=True):
            total += count
            if budget and total > budget:
                raise InvalidRequest(
                    f"the request's images have {sum(pixels)} pixels together, more than MAX_REQUEST_PIXELS={budget}",
                    param=ref.param,
                    code="request_pixels_exceeded",
                )

    async def _load(self, ref: ImageRef, slots: asyncio.Semaphore, batch_id: str | None) -> tuple[bytes, int]:
        """(bytes, pixels) of one image, checked but not stored."""
        if ref.source[:5].lower() == "data:":
            data = decode_data_url(ref, self.settings.max_image_bytes)
        else:
            async with slots:
                data = await self.fetcher.fetch(ref.source, ref.param, batch_id=batch_id)
        if len(data) > self.settings.max_image_bytes:
            raise PayloadTooLarge(
                f"the image is larger than MAX_IMAGE_BYTES={self.settings.max_image_bytes}", param=ref.param
            )
        _, width, height = await anyio.to_thread.run_sync(self._probe, data, ref.param)
        return data, width * height

    def _probe(self, data: bytes, param: str) -> tuple[str, int, int]:
        s = self.settings
        return probe_image(data, max_pixels=s.max_image_pixels, param=param, max_aspect=s.max_image_aspect_ratio)
