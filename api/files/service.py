"""Files for OpenAI's batch API: uploaded JSONL inputs and the outputs batches write.

Bytes live in the blob store (`files/<id>`); a small record in Redis says what the file is.
An upload is checked before it is stored, in chunks (no full copy in memory, no line built whole):
not empty, UTF-8, and JSON Lines (lines that are not valid JSON are allowed: they become error
lines of the batch).
"""

from __future__ import annotations

import codecs
import io
import time
import uuid
from collections.abc import AsyncIterator
from typing import BinaryIO

import anyio.to_thread
import msgspec
from redis.asyncio import Redis

from api.files.jsonl import ScannedLine, scan_lines
from api.files.protocol import FileList, FileObject
from api.pagination import page_ids
from shared import keys
from shared.blobstore import BlobStore
from shared.errors import InvalidRequest, NotFound, PayloadTooLarge
from shared.settings import Settings

SNIFF_LINES = 100
SNIFF_PARSE_BYTES = 1 << 20  # lines sniffed longer than this are judged by their start


class _CheckedStream:
    """The upload as `scan_lines` reads it, checked chunk by chunk as it passes: its size (413
    as soon as it is over, without reading further) and its UTF-8 (decoded incrementally, so a
    character split across two chunks is fine)."""

    def __init__(self, stream: BinaryIO, max_bytes: int) -> None:
        self.stream = stream
        self.max_bytes = max_bytes
        self.size = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")()

    def read(self, size: int) -> bytes:
        chunk = self.stream.read(size)
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(f"the file is larger than MAX_FILE_BYTES={self.max_bytes}", param="file")
        try:
            self._utf8.decode(chunk, final=not chunk)
        except UnicodeDecodeError:
            raise InvalidRequest(
                "the file is not UTF-8 text (JSONL expected)", param="file", code="invalid_file"
            ) from None
        return chunk


def is_json_object(line: ScannedLine) -> bool:
    """Whether a line sniffed for the format is a JSON object. A line over SNIFF_PARSE_BYTES is
    judged by its first character: parsing megabytes of JSON holds the GIL (every request of the
    process waits, thread or not), and a malformed one is its own error row when a batch runs."""
    start = line.data.lstrip()
    if not start.startswith(b"{"):
        return False
    if not line.whole:
        return True
    try:
        return isinstance(msgspec.json.decode(line.data), dict)
    except (msgspec.MsgspecError, RecursionError):
        return False


def check_jsonl(stream: BinaryIO, max_bytes: int) -> tuple[int, int]:
    """(bytes, non-empty lines) of a JSONL upload, or the 4xx that explains what is wrong.

    Read in chunks, never a line at a time: a line may be 100+ MB (see api/files/jsonl.py). The
    format is sniffed on the first SNIFF_LINES non-blank lines until one is a JSON object (lines
    that are not are allowed: they become error rows of the batch)."""
    checked = _CheckedStream(stream, max_bytes)
    lines = 0
    found_object = False
    for line in scan_lines(checked, keep=SNIFF_PARSE_BYTES):
        if line.blank:
            continue
        lines += 1
        if not found_object and lines <= SNIFF_LINES:
            found_object = is_json_object(line)
    if lines == 0:
        raise InvalidRequest("the file is empty", param="file", code="empty_file")
    if not found_object:
        raise InvalidRequest("the file is not JSON Lines: no line is a JSON object", param="file", code="invalid_file")
    return checked.size, lines


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
        size, _ = await anyio.to_thread.run_sync(check_jsonl, stream, self.settings.max_file_bytes)
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
