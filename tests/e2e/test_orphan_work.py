"""No orphan work: a synchronous chat request whose client leaves, or whose wait times out, stops its
job; with an Idempotency-Key the job keeps running and the official SDK's retries wait for it.
Jobs are counted in the stack's Redis (every submitted job is an rq job hash)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from redis import Redis

from tests.support.stack import Stack

TOKENS = 4096  # several seconds of generation on the demo model
LONG = {"max_tokens": TOKENS, "min_tokens": TOKENS, "temperature": 0.8}
MESSAGES = [{"role": "user", "content": "Write a long story."}]


@pytest.fixture(scope="module")
def short_api(stack: Stack) -> Iterator[str]:
    """An API on the shared fleet that gives up on a synchronous request after a second."""
    yield stack.start_api("orphan-timeout", REQUEST_TIMEOUT_S="1", MAX_NEW_TOKENS_DEFAULT=str(TOKENS))
    stack.stop_api("orphan-timeout")


@pytest.fixture(scope="module")
def patient_api(stack: Stack) -> Iterator[str]:
    """An API that waits a minute, so only the client's leaving can stop the job early."""
    yield stack.start_api("patient", MAX_NEW_TOKENS_DEFAULT=str(TOKENS))
    stack.stop_api("patient")


def job_ids(stack: Stack) -> set[str]:
    with Redis.from_url(stack.redis_url) as redis:
        return {key.decode().removeprefix("rq:job:") for key in redis.scan_iter("rq:job:*", count=1000)}


def final_status(stack: Stack, job_id: str, within_s: float) -> str:
    deadline = time.monotonic() + within_s
    status = ""
    while time.monotonic() < deadline:
        status = httpx.get(f"{stack.url}/v1/jobs/{job_id}", params={"wait": 2}, timeout=10).json()["status"]
        if status not in ("queued", "running"):
            break
    return status


def test_sdk_with_default_retries_runs_one_job_and_stops_it_at_the_timeout(stack: Stack, short_api: str) -> None:
    client = openai.OpenAI(base_url=f"{short_api}/v1", api_key="x", timeout=30)  # max_retries: the default 2
    before = job_ids(stack)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as timeout:
        client.chat.completions.create(
            model="omega",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=TOKENS,
            extra_body={"min_tokens": TOKENS},
        )
    assert timeout.value.status_code == 504
    assert time.monotonic() - started < 5  # one try, not three
    new = job_ids(stack) - before
    assert len(new) == 1, new
    assert final_status(stack, new.pop(), 15) == "canceled"


def test_with_an_idempotency_key_retries_attach_to_the_one_job(stack: Stack, short_api: str) -> None:
    client = openai.OpenAI(base_url=f"{short_api}/v1", api_key="x", timeout=30)
    before = job_ids(stack)
    outcome: object
    try:
        outcome = client.chat.completions.create(
            model="omega",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=TOKENS,
            extra_body={"min_tokens": TOKENS},
            extra_headers={"Idempotency-Key": f"story-{time.time_ns()}"},
        )
    except openai.InternalServerError as exc:  # the job outlived all three tries: still one job
        outcome = exc.status_code
    assert outcome == 504 or getattr(outcome, "object", None) == "chat.completion"
    new = job_ids(stack) - before
    assert len(new) == 1, new
    # 4,096 tokens take seconds alone and minutes beside a loaded suite on two cores (still running
    # after 60 s once): the wait is generous, the assertion is that the one job ends well.
    assert final_status(stack, new.pop(), 240) == "succeeded"


def test_a_client_that_disconnects_stops_its_job(stack: Stack, patient_api: str) -> None:
    before = job_ids(stack)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{patient_api}/v1/chat/completions", json={"messages": MESSAGES, **LONG}, timeout=1.5)
    left_at = time.monotonic()
    new = job_ids(stack) - before
    assert len(new) == 1, new
    assert final_status(stack, new.pop(), 15) == "canceled"
    print(f"job canceled {time.monotonic() - left_at:.2f} s after the client left")
