"""Cursor pagination over a Redis sorted set of ids (newest first), as OpenAI's list endpoints do."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from shared.redis_text import texts


async def page_ids(redis: Redis, index: str, limit: int, after: str | None) -> tuple[list[str], bool]:
    """Up to `limit` ids after the id `after` (newest first), and whether more follow."""
    start = 0
    if after:
        rank: Any = await redis.zrevrank(index, after)
        start = 0 if rank is None else int(rank) + 1
    raw = await redis.zrevrange(index, start, start + limit)
    ids = texts(raw)
    return ids[:limit], len(ids) > limit
