"""OpenAI batch files end to end with the official `openai` package, and batch-vs-interactive."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import openai
import pytest
from redis import Redis

from shared import keys
from tests.conftest import STRICT_KEY
from tests.support.images import data_url, image_bytes
from tests.support.stack import Stack, StackFactory


def line(custom_id: str, body: dict[str, Any], url: str = "/v1/chat/completions") -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def image_request(i: int) -> dict[str, Any]:
    return {
        "model": "model",
        "max_tokens": 6,
        "seed": i,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url(image_bytes(color=(i * 5 % 255, 80, 120)))}},
                    {"type": "text", "text": f"Caption image {i}."},
                ],
            }
        ],
    }


def wait_batch(client: openai.OpenAI, batch_id: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.3)
    raise TimeoutError(f"batch {batch_id} still {batch.status}")


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(row) for row in text.splitlines() if row.strip()]


@pytest.fixture
def client(strict_api: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{strict_api}/v1", api_key=STRICT_KEY, max_retries=0, timeout=60)


def test_openai_batch_with_images_and_bad_lines(client: openai.OpenAI) -> None:
    good = [line(f"req-{i}", image_request(i)) for i in range(40)]
    bad = [
        '{"custom_id": "broken", "method": "POST", ',  # invalid JSON
        line("wrong-model", {**image_request(0), "model": "gpt-4o"}),
        line("out-of-range", {**image_request(1), "temperature": 9}),
        line("unknown-endpoint", image_request(2), url="/v1/embeddings"),
        line("req-3", image_request(3)),  # duplicate custom_id
    ]
    rows = good[:20] + bad + good[20:]
    uploaded = client.files.create(file=("batch.jsonl", io.BytesIO("\n".join(rows).encode())), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    assert client.files.retrieve(uploaded.id).filename == "batch.jsonl"
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "test"}
    )
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"run": "test"}
    done = wait_batch(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (45, 40, 5)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.output_file_id and done.error_file_id

    output = jsonl(client.files.content(done.output_file_id).text)
    errors = jsonl(client.files.content(done.error_file_id).text)
    assert sorted(o["custom_id"] for o in output) == sorted(f"req-{i}" for i in range(40))
    for row in output:
        assert row["error"] is None and row["response"]["status_code"] == 200
        assert row["response"]["body"]["object"] == "chat.completion"
        assert row["response"]["body"]["usage"]["prompt_tokens"] > 16  # the image was seen
    by_id = {e["custom_id"]: e for e in errors}
    assert set(by_id) == {None, "wrong-model", "out-of-range", "unknown-endpoint", "req-3"}
    assert by_id[None]["error"]["code"] == "invalid_json"
    assert by_id["wrong-model"]["error"]["code"] == "model_not_found"
    assert by_id["out-of-range"]["error"]["param"] == "temperature"
    assert by_id["unknown-endpoint"]["error"]["code"] == "invalid_url"
    assert by_id["req-3"]["error"]["code"] == "duplicate_custom_id"
    # The same seeded request gives the same text through the synchronous endpoint.
    sync = client.chat.completions.create(**image_request(7))
    seven = next(o for o in output if o["custom_id"] == "req-7")
    assert seven["response"]["body"]["choices"][0]["message"]["content"] == sync.choices[0].message.content

    listed = [b.id for b in client.batches.list(limit=100)]
    assert batch.id in listed


def test_cancel_a_batch(client: openai.OpenAI) -> None:
    rows = [
        line(f"c-{i}", {"max_tokens": 64, "min_tokens": 64, "messages": [{"role": "user", "content": f"{i}"}]})
        for i in range(60)
    ]
    uploaded = client.files.create(file=("c.jsonl", io.BytesIO("\n".join(rows).encode())), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_batch(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at and done.cancelling_at
    assert done.request_counts is not None and done.request_counts.completed < 60
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


@pytest.fixture(scope="module")
def bulk(stacks: StackFactory) -> Stack:
    return stacks.get("bulk", workers=1, BATCH_EXPAND_AHEAD="64", MAX_BATCH_SIZE="8")


def test_ten_thousand_lines_are_expanded_a_little_at_a_time(bulk: Stack) -> None:
    client = openai.OpenAI(base_url=f"{bulk.url}/v1", api_key="x", max_retries=0)
    rows = "\n".join(
        line(f"b-{i}", {"max_tokens": 2, "messages": [{"role": "user", "content": f"n{i}"}]}) for i in range(10_000)
    )
    uploaded = client.files.create(file=("bulk.jsonl", io.BytesIO(rows.encode())), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    redis = Redis.from_url(bulk.redis_url)
    record = keys.batch_record(batch.id)
    peak = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        fields = {
            k.decode(): int(float(v))
            for k, v in redis.hgetall(record).items()
            if k in (b"submitted", b"completed", b"failed", b"canceled")
        }
        outstanding = fields.get("submitted", 0) - sum(fields.get(k, 0) for k in ("completed", "failed", "canceled"))
        peak = max(peak, outstanding, redis.llen(keys.BATCH_LANE))
        if fields.get("completed", 0) >= 300:
            break
        time.sleep(0.05)
    view = client.batches.retrieve(batch.id)
    assert view.status == "in_progress" and view.request_counts is not None
    assert view.request_counts.total == 10_000 and view.request_counts.completed >= 300
    # Never more than BATCH_EXPAND_AHEAD (+ one step of lines) unfinished at a time.
    assert peak <= 64 + 32, peak
    client.batches.cancel(batch.id)
    done = wait_batch(client, batch.id, timeout=120)
    assert done.status == "cancelled"
    assert done.request_counts is not None and done.request_counts.completed < 10_000


def test_interactive_requests_are_served_while_a_large_batch_runs(bulk: Stack) -> None:
    client = openai.OpenAI(base_url=f"{bulk.url}/v1", api_key="x", max_retries=0)
    rows = "\n".join(
        line(f"s-{i}", {"max_tokens": 48, "min_tokens": 48, "messages": [{"role": "user", "content": f"long {i}"}]})
        for i in range(400)
    )
    uploaded = client.files.create(file=("slow.jsonl", io.BytesIO(rows.encode())), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while client.batches.retrieve(batch.id).request_counts.completed < 16:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    reply = client.chat.completions.create(
        model="model", max_tokens=4, messages=[{"role": "user", "content": "me first"}]
    )
    assert reply.choices[0].message.content is not None
    during = client.batches.retrieve(batch.id)
    assert during.status == "in_progress", "the interactive request waited for the whole batch"
    assert during.request_counts is not None and during.request_counts.completed < 400
    client.batches.cancel(batch.id)
    wait_batch(client, batch.id, timeout=120)
