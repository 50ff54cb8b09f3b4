"""Queue full -> 503 with Retry-After and nothing enqueued; the waiting jobs still finish."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from redis import Redis
from rq.suspension import resume, suspend

from tests.conftest import STRICT_KEY
from tests.support.assertions import assert_openai_error, job_keys
from tests.support.procs import wait_for
from tests.support.stack import Stack

BODY = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
HEADERS = {"Authorization": f"Bearer {STRICT_KEY}"}


def test_queue_full_answers_503_with_retry_after(stack: Stack, strict_api: str) -> None:
    redis = Redis.from_url(stack.redis_url)
    queue_key = f"rq:queue:{stack_queue(stack)}"
    suspend(redis)  # the worker stops pulling: rq's own pause switch
    pool = ThreadPoolExecutor(4)
    try:
        # One job may already be in the worker's hands when it notices the pause.
        first = httpx.post(f"{strict_api}/v1/chat/completions", json=BODY, headers=HEADERS, timeout=60)
        assert first.status_code == 200
        waiting = [
            pool.submit(httpx.post, f"{strict_api}/v1/chat/completions", json=BODY, headers=HEADERS, timeout=60)
            for _ in range(2)
        ]
        wait_for(lambda: redis.llen(queue_key) == 2, 10, "two queued jobs")  # MAX_QUEUE_SIZE=2
        before = job_keys(redis)
        full = httpx.post(f"{strict_api}/v1/chat/completions", json=BODY, headers=HEADERS, timeout=60)
        error = assert_openai_error(full, 503)
        assert error["code"] == "queue_full"
        assert int(full.headers["Retry-After"]) >= 1
        assert job_keys(redis) == before, "a refused request was enqueued"
        assert httpx.get(f"{strict_api}/health").json()["overloaded"] is True
    finally:
        resume(redis)
    assert [f.result().status_code for f in waiting] == [200, 200]
    pool.shutdown()


def stack_queue(stack: Stack) -> str:
    return str(httpx.get(f"{stack.url}/health").json()["workers"][0]["queue"])
