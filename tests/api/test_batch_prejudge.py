"""Large batch lines are judged in a helper process (api/batches/prejudge.py): each gets the row it
would have got had the API process parsed it, a large line that passes still becomes a job, and
a helper that dies costs nothing but speed. In-process over a real Redis and a real spawned helper."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from api.batches.lines import LineError, RawLine, parse_line
from api.batches.prejudge import PREJUDGE_BYTES, Prejudge, Refused, first_checks
from shared.settings import Settings
from tests.api.test_batch_isolation import FINAL, create_batch, line, rows_of, settled, wait_for
from tests.support.hand_worker import finish_lane_jobs
from tests.support.inproc import api_client, service_settings
from tests.support.procs import RedisServer

DB = 10
ENDPOINT = "/v1/chat/completions"
BIG_TEXT = "x" * (PREJUDGE_BYTES * 2)  # over the helper's threshold and the character bound


def chat(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "model", "max_tokens": 2, "messages": [{"role": "user", "content": text}], **extra}


LINES = {
    "long": line("long", chat(BIG_TEXT)),
    "long-again": line("long", chat(BIG_TEXT)),  # a duplicate custom_id is found before the size
    "wrong-model": line("wrong-model", chat(BIG_TEXT, model="nope")),  # the model is checked first
    "padded": line("padded", chat("hi", pad="p" * (PREJUDGE_BYTES * 2))),  # large, and a fine request
    "not-json": '{"custom_id": "not-json", "body": "' + "j" * (PREJUDGE_BYTES * 2),
    "small": line("small", chat()),
}


def settings_for(redis_server: RedisServer, tmp_path: Path) -> Settings:
    redis_server.client(DB).flushdb()
    return service_settings(redis_server.url(DB), tmp_path)


def in_process(data: str, settings: Settings) -> LineError | Refused | None:
    """What the API process itself makes of a line (the helper must agree)."""
    parsed = parse_line(RawLine(1, data.encode(), 0), ENDPOINT, settings.max_request_bytes)
    if isinstance(parsed, LineError):
        return parsed
    checked = first_checks(1, *parsed, settings)
    return Refused(parsed[0], checked) if isinstance(checked, LineError) else None


def test_the_helper_judges_as_the_api_process_does(redis_server: RedisServer, tmp_path: Path) -> None:
    settings = settings_for(redis_server, tmp_path)
    judge = Prejudge(settings)

    async def verdicts() -> list[LineError | Refused | None]:
        try:
            return [await judge.judge(RawLine(1, data.encode(), 0), ENDPOINT) for data in LINES.values()]
        finally:
            judge.close()

    seen = asyncio.run(verdicts())
    assert seen == [in_process(data, settings) for data in LINES.values()]
    codes = [v.code if isinstance(v, LineError) else v.error.code if v else None for v in seen]
    assert codes == [
        "context_length_exceeded",
        "context_length_exceeded",
        "model_not_found",
        None,
        "invalid_json",
        None,
    ]


def run_batch(settings: Settings) -> tuple[dict[str, Any], list[tuple[str, str]], list[str]]:
    """(batch, its error rows as (custom_id, code), completed custom_ids) of a batch of LINES."""

    async def go() -> tuple[dict[str, Any], list[tuple[str, str]], list[str]]:
        async with api_client(settings) as client:
            batch_id = await create_batch(client, list(LINES.values()))
            await settled(client, batch_id, len(LINES))
            finish_lane_jobs(Redis.from_url(settings.redis_url), 2)
            batch = await wait_for(client, batch_id, FINAL)
            rows = await rows_of(client, batch["error_file_id"])
            errors = sorted((row["custom_id"] or "", row["error"]["code"]) for row in rows)
            done = sorted(row["custom_id"] for row in await rows_of(client, batch["output_file_id"]))
            return batch, errors, done

    return asyncio.run(go())


EXPECTED_ERRORS = [
    ("", "invalid_json"),  # no custom_id can be read from a line that is not JSON
    ("long", "context_length_exceeded"),
    ("long", "duplicate_custom_id"),
    ("wrong-model", "model_not_found"),
]


def test_large_lines_get_their_own_rows_and_a_passing_one_runs(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verdicts: list[object] = []
    real_judge = Prejudge.judge

    async def spy(self: Prejudge, raw: RawLine, endpoint: str) -> LineError | Refused | None:
        verdicts.append(await real_judge(self, raw, endpoint))
        return verdicts[-1]  # type: ignore[return-value]

    monkeypatch.setattr(Prejudge, "judge", spy)
    batch, errors, done = run_batch(settings_for(redis_server, tmp_path))
    assert batch["request_counts"] == {"total": 6, "completed": 2, "failed": 4}, batch
    assert errors == EXPECTED_ERRORS and done == ["padded", "small"]
    assert len(verdicts) == 5 and sum(v is not None for v in verdicts) == 4  # every large line; "padded" passed


def test_a_helper_that_dies_costs_only_speed(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def dying_helper(self: Prejudge) -> tuple[BaseProcess, Connection]:
        # A real helper process that exits as it starts: every line finds its pipe broken.
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(target=os._exit, args=(3,), daemon=True)
        process.start()
        theirs.close()
        return process, ours

    monkeypatch.setattr(Prejudge, "_start", dying_helper)
    with caplog.at_level(logging.WARNING, logger="omega.api.batches"):
        batch, errors, done = run_batch(settings_for(redis_server, tmp_path))
    assert batch["request_counts"] == {"total": 6, "completed": 2, "failed": 4}, batch
    assert errors == EXPECTED_ERRORS and done == ["padded", "small"]
    assert sum("helper failed" in r.getMessage() for r in caplog.records) == 5  # each large line, parsed here
