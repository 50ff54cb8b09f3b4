"""Micro-batching is real, per-row parameters hold inside a batch, and bad rows fail alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.assertions import assert_openai_error
from tests.support.control import workers_paused
from tests.support.images import data_url, image_bytes
from tests.support.procs import wait_for
from tests.support.stack import Stack, StackFactory


@pytest.fixture(scope="module")
def batch_stack(stacks: StackFactory) -> Stack:
    # A collection window makes the batch boundaries independent of client timing.
    return stacks.get("batch", workers=1, MAX_BATCH_SIZE="8", BATCH_TIMEOUT_MS="400", MAX_INPUT_TOKENS="64")


def post_all(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    def one(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def msg(text: str, images: int = 0) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [
        {"type": "image", "image": data_url(image_bytes(color=(9 * i, 50, 90)))} for i in range(images)
    ]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def test_eight_concurrent_requests_run_in_at_most_two_generate_calls(batch_stack: Stack) -> None:
    bodies = [{"messages": msg(f"request number {i}", images=i % 2), "max_tokens": 16, "seed": i} for i in range(8)]
    # All eight wait in the queue before the worker may pull: what is measured is how the worker
    # batches what is there, not how fast eight clients' uploads reach it on a loaded machine.
    with ThreadPoolExecutor(1) as pool:
        with workers_paused(batch_stack):
            sent = pool.submit(post_all, batch_stack.url, bodies)
            wait_for(lambda: httpx.get(f"{batch_stack.url}/health").json()["waiting_jobs"] >= 8, 60, "8 queued")
        responses = sent.result()
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    batches = {r.json()["service"]["batch_id"]: r.json()["service"]["batch_size"] for r in responses}
    assert len(batches) <= 2, batches
    assert sum(batches.values()) == 8


def test_seeded_request_same_text_alone_and_in_a_mixed_batch(batch_stack: Stack) -> None:
    target = {
        "messages": msg("describe the scene", images=1),
        "max_tokens": 24,
        "temperature": 0.9,
        "top_p": 0.8,
        "top_k": 40,
        "seed": 1234,
        "repetition_penalty": 1.2,
    }
    alone = post_all(batch_stack.url, [target])[0].json()
    others = [
        {"messages": msg("greedy one"), "max_tokens": 30, "temperature": 0},
        {"messages": msg("hot sampler", images=2), "max_tokens": 10, "temperature": 1.5, "seed": 5},
        {"messages": msg("short"), "max_tokens": 3, "top_k": 1},
        {"messages": msg("with stops"), "max_tokens": 20, "stop": ["e", "a"], "seed": 9},
        {"messages": msg("penalised"), "max_tokens": 20, "presence_penalty": 1.5, "frequency_penalty": 1.0},
        {
            "messages": msg("a much longer prompt with many words in it to change the padding of the batch"),
            "max_tokens": 12,
            "min_tokens": 12,
        },
    ]
    responses = post_all(batch_stack.url, [target, *others])
    batched = responses[0].json()
    assert batched["service"]["batch_size"] > 1, "the target did not share a batch"
    assert batched["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"]
    assert batched["usage"] == alone["usage"]


def test_a_failing_job_does_not_fail_its_batch_mates(batch_stack: Stack) -> None:
    png = image_bytes("PNG", (120, 90))
    truncated = data_url(png[: len(png) // 2])  # a valid header, broken pixel data: fails in the worker
    bodies = [
        {"messages": [{"role": "user", "content": [{"type": "image", "image": truncated}]}], "max_tokens": 8},
        {"messages": msg("five images do not fit in 64 tokens", images=5), "max_tokens": 8},
        *({"messages": msg(f"good request {i}"), "max_tokens": 8} for i in range(4)),
    ]
    responses = post_all(batch_stack.url, bodies)
    corrupt = assert_openai_error(responses[0], 400)
    assert corrupt["code"] == "invalid_image"
    too_long = assert_openai_error(responses[1], 400)
    assert too_long["code"] == "context_length_exceeded"
    good = [r.json() for r in responses[2:]]
    assert all(r.status_code == 200 for r in responses[2:]), [r.text for r in responses[2:]]
    assert max(g["service"]["batch_size"] for g in good) >= 2


def test_long_text_is_left_truncated(batch_stack: Stack) -> None:
    words = " ".join(f"word{i}" for i in range(200))
    response = post_all(batch_stack.url, [{"messages": msg(words), "max_tokens": 4}])[0]
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["prompt_tokens"] == 64
    assert body["service"]["truncated_prompt_tokens"] > 0
