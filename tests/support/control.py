"""Test helpers that act on a running stack through its real interfaces."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from redis import Redis

from shared.queue.pause import pause_pulls as suspend
from shared.queue.pause import resume_pulls as resume
from tests.support.stack import Stack


@contextmanager
def workers_paused(stack: Stack) -> Iterator[None]:
    """rq's own pause switch: workers stop pulling jobs until resumed."""
    redis = Redis.from_url(stack.redis_url)
    suspend(redis)
    try:
        # A worker blocked in its dequeue takes one more job before it sees the pause.
        httpx.post(
            f"{stack.url}/v1/chat/completions",
            timeout=60,
            json={"messages": [{"role": "user", "content": "flush"}], "max_tokens": 1},
        )
        yield
    finally:
        resume(redis)
