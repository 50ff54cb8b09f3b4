"""stream=true: OpenAI chunks through the official client, equal to the non-streamed answer."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.support.images import data_url, image_bytes
from tests.support.stack import Stack


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="none", max_retries=0, timeout=60)


REQUEST = {
    "model": "model",
    "max_tokens": 40,
    "seed": 11,
    "temperature": 0.9,
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(image_bytes())}},
                {"type": "text", "text": "Tell me about it."},
            ],
        }
    ],
}


def test_streamed_text_equals_the_non_streamed_answer_with_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(**REQUEST)
    chunks = list(client.chat.completions.create(**REQUEST, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # it really streamed


def test_stop_strings_are_never_half_sent(client: openai.OpenAI) -> None:
    body = {**REQUEST, "temperature": 0, "extra_body": {"min_tokens": 40}}
    full = client.chat.completions.create(**body).choices[0].message.content or ""
    stop = full[12:16]
    expected = client.chat.completions.create(**body, stop=[stop]).choices[0].message.content
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**body, stop=[stop], stream=True)
        if c.choices
    ]
    assert "".join(pieces) == expected == full[: full.find(stop)]


def test_without_usage_option_there_is_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(**REQUEST, stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_validation_errors_are_a_plain_4xx_before_any_event(client: openai.OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**{**REQUEST, "temperature": 7}, stream=True)
    r = httpx.post(f"{stack.url}/v1/chat/completions", json={**REQUEST, "stream_options": {"include_usage": True}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"


def test_raw_sse_format(stack: Stack) -> None:
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json={**REQUEST, "stream": True}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert line.startswith("data: ")
        assert json.loads(line.removeprefix("data: "))["object"] == "chat.completion.chunk"


def test_a_client_that_disconnects_stops_its_row(stack: Stack) -> None:
    body = {**REQUEST, "max_tokens": 512, "min_tokens": 512, "stream": True}
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        first = json.loads(next(line for line in lines if line).removeprefix("data: "))
        next(lines)  # some text has been generated
    job_id = first["id"].removeprefix("chatcmpl-")
    deadline = time.monotonic() + 20
    status = ""
    while time.monotonic() < deadline:
        status = httpx.get(f"{stack.url}/v1/jobs/{job_id}", params={"wait": 5}).json()["status"]
        if status not in ("queued", "running"):
            break
    assert status == "canceled"
