"""The adversarial review's attacks on parameters and images, replayed over HTTP against a running
stack: each gets its clean 4xx (or retryable 5xx) answer in OpenAI's shape, never a 500."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.support.assertions import assert_openai_error
from tests.support.images import ImageHost, image_bytes
from tests.support.stack import Stack

HUGE = 18446744073709551616  # 2**64


def with_image(url: str) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "x"}]}
    ]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"top_k": HUGE}, "top_k"),
        ("/v1/chat/completions", {"max_tokens": HUGE}, "max_tokens"),
        ("/v1/chat/completions", {"min_tokens": 2**40}, "min_tokens"),
        ("/v1/jobs", {"top_k": HUGE}, "top_k"),
        ("/generate", {"parameters": {"top_k": HUGE}}, "parameters.top_k"),
        ("/generate", {"parameters": {"max_new_tokens": HUGE}}, "parameters.max_new_tokens"),
    ],
)
def test_huge_integers_are_a_400(stack: Stack, path: str, body: dict, param: str) -> None:
    base = {"inputs": "hi"} if path == "/generate" else {"messages": [{"role": "user", "content": "hi"}]}
    with stack.client() as client:
        assert_openai_error(client.post(path, json={**base, **body}), 400, param)


def test_non_ascii_image_url_and_redirect_are_fetched(stack: Stack, image_host: ImageHost) -> None:
    image_host.add("/caf%C3%A9.png", image_bytes("PNG", (32, 32)))
    direct = f"{image_host.base}/café.png"
    redirect = image_host.redirect("/to-cafe", "/café.png".encode().decode("latin-1"))  # raw UTF-8 Location
    with stack.client() as client:
        for url in (direct, redirect):
            reply = client.post("/v1/chat/completions", json={"messages": with_image(url), "max_tokens": 2})
            assert reply.status_code == 200, reply.text


def test_image_host_trouble_is_a_retryable_502(stack: Stack, image_host: ImageHost) -> None:
    url = image_host.add("/down.png", b"maintenance", status=503)
    with stack.client() as client:
        error = assert_openai_error(
            client.post("/v1/chat/completions", json={"messages": with_image(url)}),
            502,
            "messages[0].content[0].image_url",
        )
    assert error["code"] == "image_host_error" and error["type"] == "upstream_error"


def test_the_one_by_forty_million_png_is_a_400(stack: Stack, image_host: ImageHost) -> None:
    buf = io.BytesIO()
    Image.new("1", (1, 40_000_000)).save(buf, "PNG", optimize=True)
    url = image_host.add("/strip.png", buf.getvalue())
    with stack.client() as client:
        error = assert_openai_error(
            client.post("/v1/chat/completions", json={"messages": with_image(url)}),
            400,
            "messages[0].content[0].image_url",
        )
    assert error["code"] == "image_aspect_ratio"
