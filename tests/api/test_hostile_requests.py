"""Client mistakes from the adversarial review (issue 12) answered as 4xx/503 on the in-process
API: deep JSON, job ids rq cannot hold, non-Latin-1 file names, oversized metadata, a full batch
lane, and a Redis that refuses writes at its maxmemory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis

from tests.support.inproc import api_client, service_settings
from tests.support.procs import RedisServer, free_port, wait_for

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]
LANE_DB = 8
CHAT = {"model": "model", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", DEEP),
        ("/v1/jobs", DEEP),
        ("/generate", DEEP),
        ("/v1/batches", DEEP),
        ("/v1/chat/completions", json.dumps(CHAT)[:-1] + ', "user": ' + "[" * 1000 + "]" * 1000 + "}"),
    ],
)
async def test_deeply_nested_json_is_a_400(client: Client, path: str, body: str) -> None:
    resp = await client.post(path, content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "json_too_deep"


async def test_job_ids_rq_cannot_hold_are_404(client: Client) -> None:
    for job_id in ("%00", "%C3%A9", "a%20b"):
        for method in ("GET", "DELETE"):
            resp = await client.request(method, f"/v1/jobs/{job_id}")
            assert resp.status_code == 404, (method, job_id, resp.text)
            assert resp.json()["error"]["code"] == "job_not_found"


async def test_non_latin1_file_name_downloads_with_rfc6266_header(client: Client) -> None:
    name = 'данные "v2" 📄.jsonl'
    up = await client.post("/v1/files", files={"file": (name, b'{"a": 1}\n')}, data={"purpose": "batch"})
    assert up.status_code == 200, up.text
    resp = await client.get(f"/v1/files/{up.json()['id']}/content")
    assert resp.status_code == 200 and resp.text == '{"a": 1}\n'
    header = resp.headers["content-disposition"]
    assert header.isascii()
    fallback, exact = header.split("; filename*=UTF-8''")
    assert fallback.startswith('attachment; filename="') and fallback.count('"') == 2
    assert unquote(exact) == name
    plain = await client.post("/v1/files", files={"file": ("in.jsonl", b'{"a": 1}\n')}, data={"purpose": "batch"})
    resp = await client.get(f"/v1/files/{plain.json()['id']}/content")
    assert resp.headers["content-disposition"] == 'attachment; filename="in.jsonl"'


@pytest.mark.parametrize(
    "metadata",
    [{f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}],
    ids=["17-pairs", "long-key", "long-value"],
)
async def test_metadata_over_openai_bounds_is_a_400(client: Client, metadata: dict[str, str]) -> None:
    resp = await client.post("/v1/jobs", json={**CHAT, "priority": "batch", "metadata": metadata})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"].startswith("metadata")
    up = await client.post("/v1/files", files={"file": ("in.jsonl", b'{"a": 1}\n')}, data={"purpose": "batch"})
    batch = {"input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    resp = await client.post("/v1/batches", json={**batch, "metadata": metadata})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "metadata", resp.text
    ok = await client.post("/v1/jobs", json={**CHAT, "priority": "batch", "metadata": {"k" * 64: "v" * 512}})
    assert ok.status_code == 202, ok.text


async def test_batch_lane_cap_answers_503_with_retry_after(redis_server: RedisServer, tmp_path: Path) -> None:
    redis_server.client(LANE_DB).flushdb()
    settings = service_settings(redis_server.url(LANE_DB), tmp_path, BATCH_LANE_MAX="3")
    async with api_client(settings) as client:
        for _ in range(3):
            assert (await client.post("/v1/jobs", json={**CHAT, "priority": "batch"})).status_code == 202
        resp = await client.post("/v1/jobs", json={**CHAT, "priority": "batch"})
        assert resp.status_code == 503 and int(resp.headers["retry-after"]) > 0, resp.text
        assert resp.json()["error"]["code"] == "batch_lane_full"


async def test_redis_at_maxmemory_is_a_503_not_a_500(tmp_path: Path) -> None:
    """A real redis-server at its maxmemory with noeviction refuses writes (OOM)."""
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""]
    proc = subprocess.Popen([*argv, "--maxmemory-policy", "noeviction"], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: RedisServer(port, tmp_path).ping(), 10, "redis-server")
        conn = Redis(port=port)
        async with api_client(service_settings(f"redis://127.0.0.1:{port}/0", tmp_path)) as client:
            # Full once the app is up: its own start-up writes are not what is tested.
            conn.config_set("maxmemory", max(1, int(conn.info("memory")["used_memory"]) - 1024))
            resp = await client.post("/v1/jobs", json={**CHAT, "priority": "batch"})
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["code"] == "queue_full" and int(resp.headers["retry-after"]) > 0
    finally:
        proc.terminate()
        proc.wait(10)
