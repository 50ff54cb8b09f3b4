"""Every bad input, in-process: a clear 4xx in OpenAI's error shape, never a 5xx, nothing enqueued.

Moved from tests/e2e/test_bad_input.py case for case; the app is the real one (lifespan, Redis,
blob store, a ready worker in the fleet), only the socket is gone.
"""

from __future__ import annotations

import base64

import pytest

from tests.api.conftest import STRICT_KEY, Client
from tests.support.assertions import assert_openai_error
from tests.support.images import ImageHost, data_url, image_bytes, pixel_bomb

pytestmark = pytest.mark.anyio

GOOD = [{"role": "user", "content": "hi"}]


def with_image(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": url}, {"type": "text", "text": "x"}]}]


BAD_BODIES = [
    pytest.param(b'{"messages": [', None, id="malformed-json"),
    pytest.param(b"", None, id="empty-body"),
    pytest.param(b"[1, 2]", None, id="not-an-object"),
    pytest.param(b'{"messages": "hi"}', "messages", id="messages-wrong-type"),
    pytest.param(b'{"messages": []}', "messages", id="empty-messages"),
    pytest.param(b'{"messages": [{"role": "bob", "content": "x"}]}', "messages[0].role", id="unknown-role"),
    pytest.param(b'{"messages": [{"role": "tool", "content": "x"}]}', "messages[0].role", id="tool-role"),
    pytest.param(b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content", id="content-type"),
    pytest.param(
        b'{"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}',
        "messages[0].content[0].type",
        id="unknown-part",
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": [{"type": "text"}]}]}',
        "messages[0].content[0]",
        id="part-missing-field",
    ),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES)
async def test_malformed_and_wrongly_typed_bodies(
    client: Client, no_new_jobs: None, body: bytes, param: str | None
) -> None:
    r = await client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    error = assert_openai_error(r, 400)
    if param is not None:
        assert error["param"] is not None and error["param"].startswith(param)


OUT_OF_RANGE = [
    ("temperature", 3),
    ("temperature", "hot"),
    ("top_p", 1.5),
    ("top_p", -0.1),
    ("max_tokens", 0),
    ("max_tokens", "a"),
    ("seed", -1),
    ("n", 2),
    ("repetition_penalty", 0),
    ("repetition_penalty", 3),
    ("top_k", -5),
    ("presence_penalty", 5),
    ("min_tokens", -1),
    ("stop", [""]),
    ("stop", ["a"] * 17),
    ("stream", "yes"),
    ("stream_options", {"include_usage": True}),
    ("logprobs", True),
    ("response_format", {"type": "json_object"}),
    ("tools", [{"type": "function", "function": {"name": "f"}}]),
]


@pytest.mark.parametrize(("field", "value"), OUT_OF_RANGE, ids=[f"{f}={v!r}"[:40] for f, v in OUT_OF_RANGE])
async def test_out_of_range_and_unsupported_parameters(
    client: Client, no_new_jobs: None, field: str, value: object
) -> None:
    r = await client.post("/v1/chat/completions", json={"messages": GOOD, field: value})
    assert_openai_error(r, 400, param=field)


async def test_min_tokens_above_max_tokens(client: Client, no_new_jobs: None) -> None:
    r = await client.post("/v1/chat/completions", json={"messages": GOOD, "max_tokens": 5, "min_tokens": 6})
    assert_openai_error(r, 400, param="min_tokens")


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
@pytest.mark.parametrize("path", ["/nope", "/v1/nope", "/v1/completions", "/v1/embeddings", "/docs/x/y"])
async def test_an_unknown_path_is_a_json_404(client: Client, no_new_jobs: None, method: str, path: str) -> None:
    # Not Litestar's HTML page for paths one segment under its docs router (at "/"), nor a 405.
    r = await client.request(method, path, json={"messages": GOOD})
    assert r.headers["content-type"].startswith("application/json")
    assert_openai_error(r, 404)


async def test_the_docs_pages_still_answer(client: Client) -> None:
    for path, kind in (("/docs", "text/html"), ("/redoc", "text/html"), ("/openapi.json", "application/vnd.oai.openapi+json")):
        r = await client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), (path, r.status_code)


async def test_an_unknown_path_is_a_404_with_or_without_the_key(strict_client: Client, no_new_jobs: None) -> None:
    # The docs router's guard no longer sees every one-segment path: a 404 is a 404.
    for headers in ({}, auth()):
        assert_openai_error(await strict_client.get("/nope", headers=headers), 404)


async def test_wrong_model_name_is_404(client: Client, no_new_jobs: None) -> None:
    r = await client.post("/v1/chat/completions", json={"messages": GOOD, "model": "gpt-4o"})
    assert assert_openai_error(r, 404, param="model")["code"] == "model_not_found"


BAD_IMAGES = [
    pytest.param("data:image/png;base64,@@@not-base64@@@", "invalid_base64", id="invalid-base64"),
    pytest.param("data:image/png;base64,aGVsbG8=x", "invalid_base64", id="bad-padding"),
    pytest.param("data:image/png,rawbytes", "invalid_image_url", id="data-url-not-base64"),
    pytest.param(data_url(b"hello, I am not an image at all"), "invalid_image", id="not-an-image"),
    pytest.param(data_url(image_bytes("BMP"), "image/bmp"), "unsupported_image_format", id="bmp"),
    pytest.param(data_url(image_bytes("TIFF"), "image/tiff"), "unsupported_image_format", id="tiff"),
    pytest.param(data_url(pixel_bomb()), "image_too_large", id="pixel-bomb"),
    pytest.param("file:///etc/passwd", "invalid_image_url", id="file-scheme"),
    pytest.param("ftp://example.com/a.png", "invalid_image_url", id="ftp-scheme"),
    pytest.param("gopher://example.com/a.png", "invalid_image_url", id="gopher-scheme"),
    pytest.param("javascript:alert(1)", "invalid_image_url", id="javascript-scheme"),
    pytest.param("/etc/passwd", "invalid_image_url", id="bare-path"),
    pytest.param("http://127.0.0.1:6379/", "image_url_blocked", id="loopback"),
    pytest.param("http://localhost/x.png", "image_url_blocked", id="localhost"),
    pytest.param("http://[::1]/x.png", "image_url_blocked", id="ipv6-loopback"),
    pytest.param("http://[::ffff:127.0.0.1]/x.png", "image_url_blocked", id="ipv4-mapped"),
    pytest.param("http://10.0.0.8/x.png", "image_url_blocked", id="private-10"),
    pytest.param("http://192.168.1.1/x.png", "image_url_blocked", id="private-192"),
    pytest.param("http://172.16.5.4/x.png", "image_url_blocked", id="private-172"),
    pytest.param("http://169.254.169.254/latest/meta-data/", "image_url_blocked", id="metadata"),
    pytest.param("http://[fd00:ec2::254]/", "image_url_blocked", id="metadata-v6"),
    pytest.param("http://100.100.100.200/", "image_url_blocked", id="shared-space"),
    pytest.param("http://0.0.0.0/x.png", "image_url_blocked", id="unspecified"),
    pytest.param("http://2130706433/x.png", "image_url_blocked", id="decimal-ip"),
    pytest.param("http://user:pw@example.com/x.png", "invalid_image_url", id="credentials"),
]


@pytest.mark.parametrize(("url", "code"), BAD_IMAGES)
async def test_bad_images(client: Client, no_new_jobs: None, url: str, code: str) -> None:
    r = await client.post("/v1/chat/completions", json={"messages": with_image(url), "max_tokens": 4})
    error = assert_openai_error(r, 400, param="messages[0].content[0].image")
    assert error["code"] == code, error


async def test_redirect_to_loopback_is_refused(client: Client, no_new_jobs: None, image_host: ImageHost) -> None:
    port = image_host.server.server_address[1]
    image_host.add("/real.png", image_bytes())
    for target in (f"http://127.0.0.1:{port}/real.png", "http://169.254.169.254/", "http://10.0.0.1/"):
        url = image_host.redirect(f"/to-{abs(hash(target))}", target)
        r = await client.post("/v1/chat/completions", json={"messages": with_image(url), "max_tokens": 4})
        assert assert_openai_error(r, 400)["code"] == "image_url_blocked"


async def test_remote_error_status_is_a_400(client: Client, no_new_jobs: None, image_host: ImageHost) -> None:
    r = await client.post("/v1/chat/completions", json={"messages": with_image(image_host.base + "/missing.png")})
    assert assert_openai_error(r, 400)["code"] == "image_fetch_failed"


# --- the strict API: key, remote images off, small limits -------------------------------------
def auth(key: str | None = STRICT_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key is not None else {}


@pytest.mark.parametrize("key", [None, "wrong-key", ""])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("POST", "/generate"),
        ("POST", "/v1/apply_template"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/redoc"),
    ],
)
async def test_missing_or_wrong_key_is_401(
    strict_client: Client, no_new_jobs: None, key: str | None, method: str, path: str
) -> None:
    r = await strict_client.request(method, path, json={"messages": GOOD, "inputs": "x"}, headers=auth(key))
    assert_openai_error(r, 401)


async def test_key_with_other_scheme_is_401(strict_client: Client, no_new_jobs: None) -> None:
    r = await strict_client.get("/v1/models", headers={"Authorization": f"Basic {STRICT_KEY}"})
    assert_openai_error(r, 401)


async def test_health_stays_open_with_a_key(strict_client: Client) -> None:
    assert (await strict_client.get("/health")).status_code == 200
    assert (await strict_client.get("/v1/models", headers=auth())).status_code == 200
    assert (await strict_client.get("/openapi.json", headers=auth())).status_code == 200


async def test_too_many_images_refused_before_any_fetch(strict_client: Client, no_new_jobs: None) -> None:
    small = data_url(image_bytes())
    content = [{"type": "image", "image": small}] * 3 + [{"type": "text", "text": "x"}]
    r = await strict_client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]}, headers=auth()
    )
    assert assert_openai_error(r, 400, param="messages")["code"] == "too_many_images"


async def test_remote_images_disabled(strict_client: Client, no_new_jobs: None, image_host: ImageHost) -> None:
    url = image_host.add("/allowed-but-disabled.png", image_bytes())
    r = await strict_client.post("/v1/chat/completions", json={"messages": with_image(url)}, headers=auth())
    assert assert_openai_error(r, 400)["code"] == "remote_images_disabled"


async def test_body_over_the_limit_is_413(strict_client: Client, no_new_jobs: None) -> None:
    big = base64.b64encode(b"\0" * 400_000).decode()
    r = await strict_client.post(
        "/v1/chat/completions", json={"messages": with_image(f"data:image/png;base64,{big}")}, headers=auth()
    )
    assert_openai_error(r, 413)


async def test_unknown_route_and_method(client: Client) -> None:
    assert_openai_error(await client.get("/v1/nothing-here"), 404)
    assert_openai_error(await client.get("/v1/chat/completions"), 405)
