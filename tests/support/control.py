"""Test helpers that act on a running stack through its real interfaces."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from redis import Redis

from shared.queue.pause import pause_pulls as suspend
from shared.queue.pause import resume_pulls as resume
from tests.support.stack import Stack

# How long a pull under way at the pause needs to take the flush job: a round trip or two.
FLUSH_GRACE_S = 1.0


@contextmanager
def workers_paused(stack: Stack) -> Iterator[None]:
    """rq's own pause switch: workers stop pulling jobs until resumed.

    A pull already under way when the pause comes takes one more job (as rq's own blocked dequeue
    does): a flush job is pushed after the pause, so such a pull takes it instead of the test's.
    If none takes it at once, no pull was under way (every later pull sees the pause first), and
    the flush is canceled rather than waited for: it would wait until the workers resume.
    """
    redis = Redis.from_url(stack.redis_url)
    suspend(redis)
    try:
        with httpx.Client(base_url=stack.url, timeout=60) as c:
            body = {"messages": [{"role": "user", "content": "flush"}], "max_tokens": 1}
            flush = c.post("/v1/jobs", json=body).json()
            deadline = time.monotonic() + FLUSH_GRACE_S
            while c.get(flush["poll_url"]).json()["status"] == "queued" and time.monotonic() < deadline:
                time.sleep(0.05)
            if c.delete(flush["poll_url"]).status_code != 200:  # taken: let it finish first
                c.get(flush["poll_url"], params={"wait": 30})
        yield
    finally:
        resume(redis)
