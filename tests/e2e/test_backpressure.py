"""Queue full -> 503 with Retry-After and nothing enqueued; the waiting jobs still finish."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from redis import Redis

from shared.queue.pause import pause_pulls as suspend
from shared.queue.pause import resume_pulls as resume
from tests.conftest import STRICT_KEY
from tests.support.assertions import assert_openai_error, job_keys
from tests.support.control import workers_paused
from tests.support.procs import answers, wait_for
from tests.support.stack import Stack

BODY = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
HEADERS = {"Authorization": f"Bearer {STRICT_KEY}"}


def test_queue_full_answers_503_with_retry_after(stack: Stack, strict_api: str) -> None:
    redis = Redis.from_url(stack.redis_url)
    queue_key = f"rq:queue:{stack_queue(stack)}"
    pool = ThreadPoolExecutor(4)
    with workers_paused(stack):  # the worker stops pulling: rq's own pause switch
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
    assert [f.result().status_code for f in waiting] == [200, 200]
    pool.shutdown()


def stack_queue(stack: Stack) -> str:
    return str(httpx.get(f"{stack.url}/health").json()["workers"][0]["queue"])


def test_request_timeout_is_504_naming_the_job_and_a_keyed_job_still_finishes(stack: Stack) -> None:
    # Without an Idempotency-Key the timed-out job is canceled (tests/e2e/test_orphan_work.py).
    url = stack.start_api("short-timeout", REQUEST_TIMEOUT_S="1")
    redis = Redis.from_url(stack.redis_url)
    suspend(redis)
    try:
        # Let the worker notice the pause before the job arrives.
        httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=60)
        keyed = {"Idempotency-Key": f"keep-{time.time_ns()}"}
        r = httpx.post(f"{url}/v1/chat/completions", json=BODY, headers=keyed, timeout=60)
        error = assert_openai_error(r, 504)
        job_id = re.search(r"/v1/jobs/([0-9a-f]{32})", error["message"]).group(1)  # type: ignore[union-attr]
    finally:
        resume(redis)
    from rq.job import Job

    from shared.serializer import MsgpackSerializer

    def finished() -> bool:
        return bool(Job.fetch(job_id, connection=redis, serializer=MsgpackSerializer).is_finished)

    wait_for(finished, 30, "the timed-out job to finish anyway")
    stack.stop_api("short-timeout")


def test_no_worker_means_a_quick_503_for_chat_while_ready_to_accept(stacks) -> None:  # type: ignore[no-untyped-def]
    """The API alone: /readyz 200 (it accepts and stores requests), the fleet signal says no,
    chat (whole and streamed) answers 503 + Retry-After well under a second, jobs are accepted."""
    from tests.support.procs import ServiceProcess, free_port, service_env, wait_for

    port = free_port()
    env = service_env({**stacks.base_env(13, stacks.redis.directory), "PORT": str(port)})
    api = ServiceProcess(["api"], env, stacks.redis.directory / "api-no-workers.log").start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(url), 30, "the API")
        health = httpx.get(f"{url}/health").json()
        assert health["ready"] is False and health["workers"] == [] and health["redis"] == "ok"
        assert health["accepting"] is True
        assert httpx.get(f"{url}/readyz").status_code == 200
        assert httpx.get(f"{url}/readyz", params={"fleet": "true"}).status_code == 503
        for body in (BODY, {**BODY, "stream": True}):
            started = time.perf_counter()
            r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
            assert time.perf_counter() - started < 0.5, "a chat request waited for a worker"
            assert assert_openai_error(r, 503)["code"] == "no_workers"
            assert int(r.headers["Retry-After"]) >= 1
        job = httpx.post(f"{url}/v1/jobs", json=BODY, timeout=10)
        assert job.status_code == 202 and job.json()["status"] == "queued", job.text
        assert httpx.get(f"{url}/livez").status_code == 200
    finally:
        api.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/livez", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
