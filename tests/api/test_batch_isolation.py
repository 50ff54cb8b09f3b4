"""Batch isolation (issue 12, item 1), in-process over a real Redis: a hostile line is that line's
error row, a batch that cannot be advanced never holds up another, and a cancelled batch's output
and error files account for every line of its input."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from redis import Redis

from api.batches import advancer
from shared import keys
from shared.settings import Settings
from tests.support.hand_worker import finish_lane_jobs
from tests.support.inproc import api_client, service_settings
from tests.support.procs import RedisServer

DB = 9
FINAL = ("completed", "failed", "cancelled", "expired")


def fresh(redis_server: RedisServer, workdir: Path, **env: str) -> Settings:
    redis_server.client(DB).flushdb()
    return service_settings(redis_server.url(DB), workdir, **env)


def chat(i: int, **extra: Any) -> dict[str, Any]:
    return {"model": "model", "max_tokens": 2, "messages": [{"role": "user", "content": f"hi {i}"}], **extra}


def line(custom_id: str, body: dict[str, Any] | str) -> str:
    body_text = body if isinstance(body, str) else json.dumps(body)
    return f'{{"custom_id": "{custom_id}", "method": "POST", "url": "/v1/chat/completions", "body": {body_text}}}'


async def upload(client: AsyncTestClient, rows: list[str]) -> str:  # type: ignore[type-arg]
    resp = await client.post(
        "/v1/files", files={"file": ("in.jsonl", "\n".join(rows).encode())}, data={"purpose": "batch"}
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


async def create_batch(client: AsyncTestClient, rows: list[str]) -> str:  # type: ignore[type-arg]
    file_id = await upload(client, rows)
    resp = await client.post(
        "/v1/batches",
        json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


async def wait_for(
    client: AsyncTestClient, batch_id: str, want: tuple[str, ...], timeout: float = 30
) -> dict[str, Any]:  # type: ignore[type-arg]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        batch: dict[str, Any] = (await client.get(f"/v1/batches/{batch_id}")).json()
        if batch["status"] in want:
            return batch
        assert asyncio.get_running_loop().time() < deadline, batch
        await asyncio.sleep(0.05)


async def rows_of(client: AsyncTestClient, file_id: str | None) -> list[dict[str, Any]]:  # type: ignore[type-arg]
    if file_id is None:
        return []
    resp = await client.get(f"/v1/files/{file_id}/content")
    return [json.loads(r) for r in resp.text.splitlines() if r.strip()]


async def settled(client: AsyncTestClient, batch_id: str, submitted: int) -> None:  # type: ignore[type-arg]
    """Wait until the advancer has turned `submitted` lines into jobs or error rows."""
    conn = Redis.from_url(client.app.state.settings.redis_url)
    deadline = asyncio.get_running_loop().time() + 30
    while conn.hlen(keys.batch_items(batch_id)) < submitted:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)


def test_hostile_lines_become_error_rows(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review's lines (top_k 2**64, a non-ASCII image URL, a body nested 5000 deep, a lone
    surrogate) and one that raises inside the expansion: each is its own error row, the other
    lines run."""
    hostile = {
        "huge-top-k": line("huge-top-k", chat(1, top_k=18446744073709551616)),
        "non-ascii-url": line(
            "non-ascii-url",
            {
                "model": "model",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/bilder/ä.png"}}],
                    }
                ],
            },
        ),
        "deep": line("deep", "[" * 5000 + "]" * 5000),
        # A lone surrogate raised deep inside the expansion (a 500 in the batch runner's tick,
        # stalling every batch, before lines were isolated); lines are parsed with msgspec now,
        # which refuses it as invalid JSON (as the API does), so the row has no custom_id.
        "lone-surrogate": line(
            "lone-surrogate", '{"model": "model", "messages": [{"role": "user", "content": "\\ud800"}]}'
        ),
        # Whatever else raises inside the expansion: an injected fault, as no known input does.
        "raises-inside": line("raises-inside", chat(0, user="raise-inside")),
    }
    settings = fresh(redis_server, tmp_path, ALLOW_REMOTE_IMAGES="1")
    real_build = advancer.build_chat_job

    async def faulty_build(request: Any, *args: Any, **kwargs: Any) -> Any:
        if request.user == "raise-inside":
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return await real_build(request, *args, **kwargs)

    monkeypatch.setattr(advancer, "build_chat_job", faulty_build)

    async def go() -> None:
        async with api_client(settings) as client:
            good = [line(f"ok-{i}", chat(i)) for i in range(4)]
            batch_id = await create_batch(client, good[:2] + list(hostile.values()) + good[2:])
            await settled(client, batch_id, 9)
            finish_lane_jobs(Redis.from_url(settings.redis_url), 4)
            batch = await wait_for(client, batch_id, FINAL)
            assert batch["status"] == "completed", batch
            assert batch["request_counts"] == {"total": 9, "completed": 4, "failed": 5}
            rows = await rows_of(client, batch["error_file_id"])
            errors = {row["custom_id"]: row["error"] for row in rows}
            # None: the deep line and the lone surrogate, not JSON a custom_id can be read from
            assert set(errors) == {"huge-top-k", "non-ascii-url", "raises-inside", None}
            assert [row["error"]["code"] for row in rows if row["custom_id"] is None] == ["invalid_json"] * 2
            assert [name for name, e in errors.items() if e["code"] == "internal_error"] == ["raises-inside"]
            assert len(await rows_of(client, batch["output_file_id"])) == 4

    asyncio.run(go())


def test_a_broken_batch_never_holds_up_another(redis_server: RedisServer, tmp_path: Path) -> None:
    """A batch that cannot be advanced (a corrupt record) is failed after its retries; a batch
    created after it completes meanwhile."""
    settings = fresh(redis_server, tmp_path)
    conn = Redis.from_url(settings.redis_url)

    async def go() -> None:
        async with api_client(settings) as client:
            broken = await create_batch(client, [line("a", chat(0))])
            conn.hset(keys.batch_record(broken), "expanded_offset", "garbage")  # every step raises on it
            healthy = await create_batch(client, [line("b", chat(1))])
            await settled(client, healthy, 1)
            finish_lane_jobs(conn, 1)
            assert (await wait_for(client, healthy, FINAL))["status"] == "completed"
            failed = await wait_for(client, broken, ("failed",))
            assert failed["errors"]["data"][0]["code"] == "internal_error"
            assert broken.encode() not in conn.zrange(keys.BATCHES_ACTIVE, 0, -1)

    asyncio.run(go())


def test_a_cancelled_batch_accounts_for_every_line(redis_server: RedisServer, tmp_path: Path) -> None:
    """107 lines, cancelled midway: some finished, some queued, most never read. Output and
    error files together hold one row per input line, each custom_id once."""
    settings = fresh(redis_server, tmp_path, BATCH_EXPAND_AHEAD="40")
    conn = Redis.from_url(settings.redis_url)

    async def go() -> None:
        async with api_client(settings) as client:
            batch_id = await create_batch(client, [line(f"req-{i}", chat(i)) for i in range(107)])
            await settled(client, batch_id, 40)
            finished = finish_lane_jobs(conn, 25)
            await settled(client, batch_id, 60)  # 25 finished: 20 more lines read
            resp = await client.post(f"/v1/batches/{batch_id}/cancel")
            assert resp.status_code == 200, resp.text
            batch = await wait_for(client, batch_id, FINAL)
            assert batch["status"] == "cancelled", batch
            output = await rows_of(client, batch["output_file_id"])
            errors = await rows_of(client, batch["error_file_id"])
            assert len(output) == len(finished) == 25
            assert sorted(r["custom_id"] for r in output + errors) == sorted(f"req-{i}" for i in range(107))
            codes = {r["response"]["body"]["error"]["code"] for r in errors}
            assert codes == {"batch_cancelled"}

    asyncio.run(go())


def test_an_unreadable_result_costs_only_its_line(redis_server: RedisServer, tmp_path: Path) -> None:
    """One line's bookkeeping corrupt at finalizing: that line gets an error row, the rest their results."""
    settings = fresh(redis_server, tmp_path)
    conn = Redis.from_url(settings.redis_url)

    async def go() -> None:
        async with api_client(settings) as client:
            batch_id = await create_batch(client, [line(name, chat(i)) for i, name in enumerate("abc")])
            await settled(client, batch_id, 3)
            conn.hset(keys.batch_items(batch_id), "2", "!not json")
            finish_lane_jobs(conn, 3)
            batch = await wait_for(client, batch_id, FINAL)
            assert batch["status"] == "completed", batch
            assert [r["custom_id"] for r in await rows_of(client, batch["output_file_id"])] == ["a", "c"]
            [error] = await rows_of(client, batch["error_file_id"])
            assert (error["custom_id"], error["response"]["body"]["error"]["code"]) == ("b", "result_unreadable")

    asyncio.run(go())


def test_a_full_batch_lane_makes_batches_wait(redis_server: RedisServer, tmp_path: Path) -> None:
    """BATCH_LANE_MAX: lines stay unexpanded while the lane is full; the batch is never refused."""
    settings = fresh(redis_server, tmp_path, BATCH_LANE_MAX="5")
    conn = Redis.from_url(settings.redis_url)

    async def go() -> None:
        async with api_client(settings) as client:
            batch_id = await create_batch(client, [line(f"r{i}", chat(i)) for i in range(12)])
            await settled(client, batch_id, 5)
            await asyncio.sleep(0.5)
            assert conn.llen(keys.BATCH_LANE) == 5 and conn.hlen(keys.batch_items(batch_id)) == 5
            assert (await client.get(f"/v1/batches/{batch_id}")).json()["status"] == "in_progress"
            for _ in range(3):
                finish_lane_jobs(conn, 5)
                await asyncio.sleep(0.3)
            batch = await wait_for(client, batch_id, FINAL)
            assert batch["request_counts"] == {"total": 12, "completed": 12, "failed": 0}

    asyncio.run(go())
