"""The app's lifespan: it starts and always ends, however its background loops are caught."""

from __future__ import annotations

import asyncio
import threading

from shared.settings import Settings
from tests.support.inproc import api_client


def test_the_app_always_shuts_down(inproc_settings: Settings, fleet: object) -> None:
    """Shutdown cancels the feeder, batch runner and janitor loops wherever they are (often in
    the middle of a Redis command); none may outlive it, or the process never exits."""

    async def cycles() -> None:
        for i in range(12):
            async with api_client(inproc_settings) as client:
                assert (await client.get("/livez")).status_code == 200
                await asyncio.sleep(0.03 * (i % 5))

    thread = threading.Thread(target=asyncio.run, args=(cycles(),), daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the app's lifespan did not end: a background loop outlived its cancellation"
