"""OpenAI Batch API requests: create, read, list and cancel batches (the work is in advancer.py)."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from redis.asyncio import Redis

from api.batches.protocol import SUPPORTED_ENDPOINTS, BatchList, BatchObject
from api.batches.record import BatchRecord
from api.files.service import FileService
from api.pagination import page_ids
from shared import keys
from shared.contract import FINAL_BATCH_STATUSES
from shared.errors import Conflict, InvalidRequest, NotFound

WINDOW = re.compile(r"^(\d+)([hm])$")
MAX_WINDOW_S = 7 * 86400


def window_seconds(window: str) -> int:
    """OpenAI's completion_window ("24h"); minutes and other hour counts are accepted too."""
    match = WINDOW.match(window)
    if not match:
        raise InvalidRequest("completion_window must look like '24h'", param="completion_window")
    seconds = int(match.group(1)) * (3600 if match.group(2) == "h" else 60)
    if not 0 < seconds <= MAX_WINDOW_S:
        raise InvalidRequest("completion_window must be between 1m and 168h", param="completion_window")
    return seconds


def check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise InvalidRequest(
            "metadata holds at most 16 pairs (keys up to 64, values up to 512 characters)", param="metadata"
        )


class BatchService:
    def __init__(self, redis: Redis, files: FileService) -> None:
        self.redis = redis
        self.files = files

    async def record(self, batch_id: str) -> BatchRecord:
        fields = await self.redis.hgetall(keys.batch_record(batch_id))
        if not fields:
            raise NotFound(f"batch {batch_id} not found", param="batch_id", code="batch_not_found")
        return BatchRecord(fields)

    async def create(
        self, input_file_id: str, endpoint: str, completion_window: str, metadata: dict[str, str] | None
    ) -> BatchObject:
        if endpoint not in SUPPORTED_ENDPOINTS:
            raise InvalidRequest(
                f"endpoint {endpoint!r} is not supported (supported: {', '.join(SUPPORTED_ENDPOINTS)})",
                param="endpoint",
                code="invalid_endpoint",
            )
        window = window_seconds(completion_window)
        check_metadata(metadata)
        source = await self.files.get(input_file_id)
        if source.purpose != "batch":
            raise InvalidRequest(
                f"file {input_file_id} has purpose {source.purpose!r}, not 'batch'",
                param="input_file_id",
                code="invalid_purpose",
            )
        now = int(time.time())
        batch_id = f"batch_{uuid.uuid4().hex}"
        fields: dict[Any, str | int] = {
            "id": batch_id,
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "completion_window": completion_window,
            "status": "validating",
            "created_at": now,
            "expires_at": now + window,
            "metadata": json.dumps(metadata) if metadata is not None else "",
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.batch_record(batch_id), mapping=fields)
            pipe.zadd(keys.BATCHES_INDEX, {batch_id: now})
            pipe.zadd(keys.BATCHES_ACTIVE, {batch_id: now})
            await pipe.execute()
        return (await self.record(batch_id)).to_object()

    async def get(self, batch_id: str) -> BatchObject:
        return (await self.record(batch_id)).to_object()

    async def list(self, limit: int, after: str | None) -> BatchList:
        ids, more = await page_ids(self.redis, keys.BATCHES_INDEX, limit, after)
        batches = []
        for batch_id in ids:
            fields = await self.redis.hgetall(keys.batch_record(batch_id))
            if fields:
                batches.append(BatchRecord(fields).to_object())
        return BatchList(
            data=batches,
            first_id=batches[0].id if batches else None,
            last_id=batches[-1].id if batches else None,
            has_more=more,
        )

    async def cancel(self, batch_id: str) -> BatchObject:
        record = await self.record(batch_id)
        if record.status in FINAL_BATCH_STATUSES:
            raise Conflict(f"batch {batch_id} is already {record.status}", param="batch_id", code="batch_already_final")
        if record.status != "cancelling":
            # The runner sees this, stops expanding the input and cancels what has not run.
            await self.redis.hset(
                keys.batch_record(batch_id), mapping={"status": "cancelling", "cancelling_at": int(time.time())}
            )
        return await self.get(batch_id)
