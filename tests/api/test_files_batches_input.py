"""Files and batches requests that must be refused, in-process (moved from tests/e2e/test_batches.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from tests.api.conftest import STRICT_KEY, Client
from tests.support.assertions import assert_openai_error
from tests.support.inproc import api_client, service_settings

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": f"Bearer {STRICT_KEY}"}


async def upload(c: Client, data: bytes, purpose: str = "batch", **headers: str) -> httpx.Response:
    return await c.post("/v1/files", files={"file": ("f.jsonl", data)}, data={"purpose": purpose}, headers=headers)


@pytest.mark.parametrize(
    ("data", "purpose", "code"),
    [
        pytest.param(b'{"a": 1}\n', "fine-tune", "invalid_purpose", id="purpose"),
        pytest.param(b"", "batch", "empty_file", id="empty"),
        pytest.param(b"\n\n  \n", "batch", "empty_file", id="blank-lines"),
        pytest.param(b"a,b,c\n1,2,3\n", "batch", "invalid_file", id="csv"),
        pytest.param(b"\xff\xfe\x00binary", "batch", "invalid_file", id="binary"),
    ],
)
async def test_bad_uploads_are_400(strict_client: Client, data: bytes, purpose: str, code: str) -> None:
    assert assert_openai_error(await upload(strict_client, data, purpose, **AUTH), 400)["code"] == code


async def test_upload_without_a_file_is_400(strict_client: Client) -> None:
    assert_openai_error(await strict_client.post("/v1/files", data={"purpose": "batch"}, headers=AUTH), 400)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/files/file-nope"),
        ("GET", "/v1/files/file-nope/content"),
        ("GET", "/v1/batches/batch_nope"),
        ("POST", "/v1/batches/batch_nope/cancel"),
    ],
)
async def test_unknown_files_and_batches_are_404(strict_client: Client, method: str, path: str) -> None:
    assert_openai_error(await strict_client.request(method, path, headers=AUTH), 404)


async def test_batch_of_an_unknown_file_is_404(strict_client: Client) -> None:
    body = {"input_file_id": "file-nope", "endpoint": "/v1/chat/completions"}
    assert_openai_error(await strict_client.post("/v1/batches", json=body, headers=AUTH), 404)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"endpoint": "/v1/embeddings"}, id="endpoint"),
        pytest.param({"endpoint": "/v1/chat/completions", "completion_window": "forever"}, id="window"),
    ],
)
async def test_bad_batch_bodies_are_400(strict_client: Client, body: dict) -> None:
    good = (await upload(strict_client, b'{"custom_id": "x"}\n', **AUTH)).json()["id"]
    assert_openai_error(
        await strict_client.post("/v1/batches", json={"input_file_id": good, **body}, headers=AUTH), 400
    )


async def test_batch_without_an_input_file_is_400(strict_client: Client) -> None:
    body = {"endpoint": "/v1/chat/completions"}
    assert_openai_error(await strict_client.post("/v1/batches", json=body, headers=AUTH), 400)


async def test_files_and_batches_need_the_key(strict_client: Client) -> None:
    assert_openai_error(await upload(strict_client, b"{}"), 401)
    assert_openai_error(await strict_client.get("/v1/batches"), 401)


@pytest.fixture(scope="module")
async def small_files(inproc_settings: Settings, inproc_dir: Path, fleet: object) -> AsyncIterator[Client]:
    settings = service_settings(inproc_settings.redis_url, inproc_dir, MAX_FILE_BYTES="10000")
    async with api_client(settings) as c:
        yield c


async def test_file_over_the_size_limit_is_413(small_files: Client) -> None:
    big = b"\n".join(b'{"custom_id": "%d", "pad": "%s"}' % (i, b"x" * 100) for i in range(200))
    assert_openai_error(await upload(small_files, big), 413)
