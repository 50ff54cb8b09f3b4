"""The background-loop skeleton (api/background.py): errors pause it, only cancellation ends it."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from api.background import run_forever


def test_the_loop_survives_outages_and_errors_and_stops_on_cancel(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def step() -> float:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RedisConnectionError("redis is restarting")
        if len(calls) == 2:
            raise ValueError("a bug")
        return 0.0

    async def go() -> None:
        task = asyncio.create_task(run_forever("probe", step, logging.getLogger("probe"), error_pause_s=0.0))
        while len(calls) < 5:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="probe"):
        asyncio.run(go())
    assert "probe paused: redis is restarting" in caplog.text
    assert "probe error" in caplog.text and "ValueError: a bug" in caplog.text
