"""Blob fetch and decode for a batch, with an LRU of decoded images (IMAGE_CACHE_SIZE).

Captioning jobs and multi-turn chats send the same image again and again; keeping decoded,
resized images by their content hash skips both the blob-store round trip and the decode.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from PIL import Image

from shared.blobstore import BlobStore, get_image
from shared.errors import ServiceError
from shared.images import DecodeFloor, decode_image
from shared.settings import Settings


class ImageCache:
    """Thread-safe LRU of decoded images keyed by blob digest."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Image.Image] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, digest: str) -> Image.Image | None:
        with self._lock:
            image = self._items.get(digest)
            if image is None:
                self.misses += 1
                return None
            self._items.move_to_end(digest)
            self.hits += 1
            return image

    def contains(self, digest: str) -> bool:
        with self._lock:
            return digest in self._items

    def put(self, digest: str, image: Image.Image) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[digest] = image
            self._items.move_to_end(digest)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


class ImageLoader:
    """Fetches and decodes many blobs at once; Pillow and boto3 release the GIL, so threads help."""

    def __init__(
        self, store: BlobStore, settings: Settings, threads: int = 8, floor: DecodeFloor | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        # What the model's processor needs (workers/decode_floor.py): JPEGs are decoded no larger.
        self.floor = floor if settings.image_reduced_decode else None
        self.cache = ImageCache(settings.image_cache_size)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="image-load")
        self._inflight: dict[str, Future[Image.Image | ServiceError]] = {}
        self._inflight_lock = threading.RLock()  # a done future runs its callback at once, here

    def _load(self, digest: str) -> Image.Image | ServiceError:
        cached = self.cache.get(digest)
        if cached is not None:
            return cached
        try:
            data = get_image(self.store, digest)
            image = decode_image(
                data,
                max_side=self.settings.max_image_size,
                max_pixels=self.settings.max_image_pixels,
                max_aspect=self.settings.max_image_aspect_ratio,
                floor=self.floor,
            )
        except ServiceError as exc:
            return exc
        self.cache.put(digest, image)
        return image

    def _future(self, digest: str) -> Future[Image.Image | ServiceError]:
        """The load of `digest`, started now unless one is already running (e.g. a prefetch)."""
        with self._inflight_lock:
            future = self._inflight.get(digest)
            if future is None:
                future = self._pool.submit(self._load, digest)
                self._inflight[digest] = future
                future.add_done_callback(functools.partial(self._forget, digest))
            return future

    def _forget(self, digest: str, _done: object = None) -> None:
        with self._inflight_lock:
            self._inflight.pop(digest, None)

    def prefetch(self, digests: Iterable[str]) -> None:
        """Start fetching and decoding images of jobs still waiting, while the current batch runs."""
        for digest in dict.fromkeys(digests):
            if self.cache.capacity > 0 and not self.cache.contains(digest):
                self._future(digest)

    def load_many(self, digests: Iterable[str]) -> dict[str, Image.Image | ServiceError]:
        unique = list(dict.fromkeys(digests))
        futures = [self._future(d) for d in unique]
        return {d: f.result() for d, f in zip(unique, futures, strict=True)}

