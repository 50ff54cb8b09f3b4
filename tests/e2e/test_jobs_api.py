"""Submit-and-poll jobs against the real stack: states, waiting, cancel, idempotency, deadlines."""

from __future__ import annotations

import time

import httpx
import pytest
from redis import Redis
from rq.job import Job
from rq.registry import FinishedJobRegistry

from shared.serializer import MsgpackSerializer
from tests.support.assertions import assert_openai_error
from tests.support.control import workers_paused
from tests.support.images import data_url, image_bytes
from tests.support.stack import Stack

SEEDED = {
    "messages": [
        {
            "role": "user",
            "content": [{"type": "image", "image": data_url(image_bytes())}, {"type": "text", "text": "caption this"}],
        }
    ],
    "max_tokens": 20,
    "seed": 77,
    "temperature": 0.9,
}


def submit(c: httpx.Client, body: dict, **headers: str) -> httpx.Response:
    return c.post("/v1/jobs", json=body, headers=headers)


def test_job_lifecycle_and_result_equals_the_synchronous_answer(stack: Stack) -> None:
    with stack.client() as c:
        r = submit(c, SEEDED)
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["object"] == "job" and job["status"] in ("queued", "running", "succeeded")
        assert job["poll_url"] == f"/v1/jobs/{job['id']}" and r.headers["Location"] == job["poll_url"]
        assert isinstance(job["created_at"], int)
        done = c.get(job["poll_url"], params={"wait": 30}).json()
        sync = c.post("/v1/chat/completions", json=SEEDED).json()
    assert done["status"] == "succeeded" and done["error"] is None
    result = done["result"]
    assert result["object"] == "chat.completion" and result["id"] == f"chatcmpl-{job['id']}"
    assert result["choices"] == sync["choices"]
    assert result["usage"] == sync["usage"]
    assert done["finished_at"] >= done["created_at"] and done["started_at"] is not None


def test_wait_returns_as_soon_as_the_job_is_final(stack: Stack) -> None:
    with stack.client() as c:
        job = submit(c, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).json()
        started = time.monotonic()
        done = c.get(job["poll_url"], params={"wait": 50}).json()
    assert done["status"] == "succeeded"
    assert time.monotonic() - started < 25  # woken by the result, not by the 50 s limit


def test_queued_job_shows_position_and_wait_times_out_with_current_state(stack: Stack) -> None:
    with stack.client() as c, workers_paused(stack):
        first = submit(c, {"messages": [{"role": "user", "content": "one"}], "max_tokens": 2}).json()
        second = submit(c, {"messages": [{"role": "user", "content": "two"}], "max_tokens": 2}).json()
        view = c.get(second["poll_url"], params={"wait": 1}).json()
        assert view["status"] == "queued"
        assert view["queue_position"] == 2 and view["estimated_wait_seconds"] is not None
        assert c.get(first["poll_url"]).json()["queue_position"] == 1
    with stack.client() as c:
        assert c.get(second["poll_url"], params={"wait": 30}).json()["status"] == "succeeded"


def test_cancel_a_queued_job_it_never_runs(stack: Stack) -> None:
    redis = Redis.from_url(stack.redis_url)
    with stack.client() as c:
        with workers_paused(stack):
            job = submit(c, {"messages": [{"role": "user", "content": "never"}], "max_tokens": 2}).json()
            r = c.delete(job["poll_url"])
            assert r.status_code == 200, r.text
            canceled = r.json()
            assert canceled["status"] == "canceled" and canceled["cancellation"] == "canceled_before_start"
            assert canceled["error"]["code"] == "job_canceled"
        # After the workers resume it still never runs.
        c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "after"}], "max_tokens": 1})
        assert c.get(job["poll_url"]).json()["status"] == "canceled"
        assert_openai_error(c.delete(job["poll_url"]), 409)
    rq_job = Job.fetch(job["id"], connection=redis, serializer=MsgpackSerializer)
    assert rq_job.started_at is None
    assert job["id"] not in FinishedJobRegistry(rq_job.origin, connection=redis).get_job_ids()


def test_cancel_a_running_job_stops_it(stack: Stack) -> None:
    body = {"messages": [{"role": "user", "content": "a long answer"}], "max_tokens": 512, "min_tokens": 512}
    with stack.client() as c:
        job = submit(c, body).json()
        deadline = time.monotonic() + 20
        while c.get(job["poll_url"]).json()["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.02)
        r = c.delete(job["poll_url"])
        canceled = r.json()
    # 512 tokens take over a second; the worker sees the request within one heartbeat (0.5 s).
    assert canceled["cancellation"] == "stopped_while_running", canceled
    assert canceled["status"] == "canceled" and "while it was running" in canceled["error"]["message"]


def test_idempotency_key(stack: Stack) -> None:
    body = {"messages": [{"role": "user", "content": "once"}], "max_tokens": 2}
    key = f"key-{time.time_ns()}"
    with stack.client() as c:
        first = submit(c, body, **{"Idempotency-Key": key})
        again = submit(c, body, **{"Idempotency-Key": key})
        other = submit(c, {**body, "max_tokens": 3}, **{"Idempotency-Key": key})
        fresh = submit(c, body, **{"Idempotency-Key": key + "-2"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert assert_openai_error(other, 409)["code"] == "idempotency_key_reused"
    assert fresh.json()["id"] != first.json()["id"]


def test_deadline_expires_a_job_that_did_not_start(stack: Stack) -> None:
    with stack.client() as c:
        with workers_paused(stack):
            job = submit(
                c, {"messages": [{"role": "user", "content": "late"}], "max_tokens": 2, "expires_after": 1}
            ).json()
            assert job["expires_at"] == pytest.approx(job["created_at"] + 1, abs=1)
            view = c.get(job["poll_url"], params={"wait": 10}).json()
            assert view["status"] == "expired" and view["error"]["code"] == "job_expired"
        c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "after"}], "max_tokens": 1})
        assert c.get(job["poll_url"]).json()["status"] == "expired"


def test_worker_expires_a_job_whose_deadline_passed_in_its_queue(stack: Stack) -> None:
    with stack.client() as c:
        with workers_paused(stack):
            job = submit(
                c, {"messages": [{"role": "user", "content": "late"}], "max_tokens": 2, "expires_after": 0.5}
            ).json()
            time.sleep(1)  # nobody looks at it: the worker finds it past its deadline
        final = c.get(job["poll_url"], params={"wait": 10}).json()
    assert final["status"] == "expired"


def test_results_are_kept_for_the_retention_time_then_404(stack: Stack) -> None:
    url = stack.start_api("short-retention", JOB_RESULT_TTL_S="2")
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            job = submit(c, {"messages": [{"role": "user", "content": "brief"}], "max_tokens": 2}).json()
            assert c.get(job["poll_url"], params={"wait": 30}).json()["status"] == "succeeded"
            time.sleep(3.5)
            gone = c.get(job["poll_url"])
        assert assert_openai_error(gone, 404)["code"] == "job_not_found"
    finally:
        stack.stop_api("short-retention")  # its settings must not apply to other tests' batches


def test_batch_priority_job_goes_through_the_lane(stack: Stack) -> None:
    with stack.client() as c:
        job = submit(
            c,
            {
                "messages": [{"role": "user", "content": "low"}],
                "max_tokens": 2,
                "priority": "batch",
                "metadata": {"who": "test"},
            },
        ).json()
        assert job["priority"] == "batch" and job["metadata"] == {"who": "test"}
        assert c.get(job["poll_url"], params={"wait": 30}).json()["status"] == "succeeded"
