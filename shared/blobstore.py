"""Blob storage for image bytes and uploaded/batch files (`keys.file_blob`).

Two implementations behind one protocol: a local directory (the embedded default) and any
S3-compatible store through boto3. Images are content-addressed (`image_key(sha256)`), so the
same image is stored once however many requests send it; files are stored under their file id.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, BinaryIO, Protocol

from shared.errors import NotFound, ServiceUnavailable
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.blob_retention import BlobRetention


class BlobNotFound(NotFound):
    """A key that is not (or no longer) in the store."""


class BlobStoreUnavailable(ServiceUnavailable):
    """The store cannot be reached; clients get a 503 and may retry."""


class BlobStore(Protocol):
    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def put_stream(self, key: str, stream: BinaryIO) -> None: ...

    def open_stream(self, key: str, offset: int = 0) -> BinaryIO:
        """A readable stream of the blob from byte `offset` (resuming a long read elsewhere)."""
        ...

    def check(self) -> None:
        """Raise BlobStoreUnavailable when the store is not usable (readiness)."""


def image_key(digest: str) -> str:
    return f"images/{digest[:2]}/{digest}"


def put_image(store: BlobStore, data: bytes, retention: BlobRetention | None = None) -> str:
    """Store image bytes once under their sha256; returns the digest (the job's blob reference).

    With `retention`, the reference is recorded first (BLOB_TTL_S counts from the latest one), and
    a blob a sweep was deleting at that moment is written again."""
    digest = hashlib.sha256(data).hexdigest()
    key = image_key(digest)
    rewrite = retention.touch(digest) if retention is not None else False
    if rewrite or not store.exists(key):
        store.put_bytes(key, data)
    return digest


def get_image(store: BlobStore, digest: str) -> bytes:
    return store.get_bytes(image_key(digest))


def create_blob_store(settings: Settings) -> BlobStore:
    """The store the settings name: S3 when configured, else a local directory."""
    if settings.blob_store_kind == "s3":
        from shared.blob_s3 import S3BlobStore

        return S3BlobStore.from_settings(settings)
    from shared.blob_local import LocalBlobStore

    return LocalBlobStore(settings.local_blob_dir)
