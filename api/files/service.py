"""Files for OpenAI's batch API: uploaded JSONL inputs and the outputs batches write.

Bytes live in the blob store (`files/<id>`); a small record in Redis says what the file is.
An upload is checked as it is copied (no full copy in memory): not empty, UTF-8, and JSON Lines
(lines that are not valid JSON are allowed: they become error lines of the batch).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import BinaryIO

import anyio.to_thread
import msgspec
from redis.asyncio import Redis

from api.files.protocol import FileList, FileObject
from api.pagination import page_ids
from shared import keys
from shared.blobstore import BlobStore
from shared.errors import InvalidRequest, NotFound, PayloadTooLarge
from shared.settings import Settings

SNIFF_LINES = 100


def check_jsonl(stream: BinaryIO, max_bytes: int, max_line_bytes: int = 1 << 62) -> tuple[int, int]:
    """(bytes, non-empty lines) of a JSONL upload, or the 4xx that explains what is wrong.

    A line over `max_line_bytes` (a batch line's limit, MAX_REQUEST_BYTES) is not parsed to sniff
    the format: it becomes its own `line_too_large` error row later, and parsing 100 MB of JSON
    holds the GIL (every request of the process would wait, thread or not)."""
    size = lines = json_objects = 0
    for raw in stream:
        size += len(raw)
        if size > max_bytes:
            raise PayloadTooLarge(f"the file is larger than MAX_FILE_BYTES={max_bytes}", param="file")
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise InvalidRequest(
                "the file is not UTF-8 text (JSONL expected)", param="file", code="invalid_file"
            ) from None
        if not text:
            continue
        lines += 1
        if lines <= SNIFF_LINES and len(raw) <= max_line_bytes and text.startswith("{"):
            with contextlib.suppress(ValueError, RecursionError):  # such a line is its own error row later
                json_objects += isinstance(json.loads(text), dict)
    if lines == 0:
        raise InvalidRequest("the file is empty", param="file", code="empty_file")
    if json_objects == 0:
        raise InvalidRequest("the file is not JSON Lines: no line is a JSON object", param="file", code="invalid_file")
    return size, lines


class FileService:
    def __init__(self, settings: Settings, redis: Redis, store: BlobStore) -> None:
        self.settings = settings
        self.redis = redis
        self.store = store

    async def _save(self, record: FileObject) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.file_record(record.id), msgspec.json.encode(record))
            pipe.zadd(keys.FILES_INDEX, {record.id: record.created_at})
            await pipe.execute()

    async def upload(self, stream: BinaryIO, filename: str, purpose: str) -> FileObject:
        if purpose != "batch":
            raise InvalidRequest(f"purpose must be 'batch' (got {purpose!r})", param="purpose", code="invalid_purpose")
        size, _ = await anyio.to_thread.run_sync(
            check_jsonl, stream, self.settings.max_file_bytes, self.settings.max_request_bytes
        )
        record = FileObject(
            id=f"file-{uuid.uuid4().hex}",
            bytes=size,
            created_at=int(time.time()),
            filename=filename or "upload.jsonl",
            purpose=purpose,
        )
        stream.seek(0)
        await anyio.to_thread.run_sync(self.store.put_stream, keys.file_blob(record.id), stream)
        await self._save(record)
        return record

    async def store_output(self, path: str, filename: str) -> FileObject:
        """Register a file a batch wrote (purpose batch_output)."""
        with open(path, "rb") as stream:
            size = stream.seek(0, io.SEEK_END)
            stream.seek(0)
            record = FileObject(
                id=f"file-{uuid.uuid4().hex}",
                bytes=size,
                created_at=int(time.time()),
                filename=filename,
                purpose="batch_output",
            )
            await anyio.to_thread.run_sync(self.store.put_stream, keys.file_blob(record.id), stream)
        await self._save(record)
        return record

    async def get(self, file_id: str) -> FileObject:
        raw = await self.redis.get(keys.file_record(file_id))
        if raw is None:
            raise NotFound(f"file {file_id} not found", param="file_id", code="file_not_found")
        return msgspec.json.decode(raw, type=FileObject)

    async def list(self, limit: int, after: str | None) -> FileList:
        ids, more = await page_ids(self.redis, keys.FILES_INDEX, limit, after)
        return FileList(data=[await self.get(i) for i in ids], has_more=more)

    async def delete(self, file_id: str) -> FileObject:
        record = await self.get(file_id)
        await anyio.to_thread.run_sync(self.store.delete, keys.file_blob(file_id))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.file_record(file_id))
            pipe.zrem(keys.FILES_INDEX, file_id)
            await pipe.execute()
        return record

    def open(self, file_id: str, offset: int = 0) -> BinaryIO:
        """Blocking: call from a thread."""
        return self.store.open_stream(keys.file_blob(file_id), offset)

    async def content(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's bytes in 1 MiB chunks, read in a thread (the store's client blocks)."""
        await self.get(file_id)
        stream = await anyio.to_thread.run_sync(self.open, file_id)
        try:
            while chunk := await anyio.to_thread.run_sync(stream.read, 1 << 20):
                yield chunk
        finally:
            stream.close()
