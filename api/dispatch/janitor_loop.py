"""Runs the janitor (shared/queue/janitor.py) from every API process; its lock makes one sweep at a time."""

from __future__ import annotations

import logging

import anyio.to_thread
from redis import Redis as SyncRedis

from api.background import run_forever
from shared.blob_retention import BlobRetention
from shared.queue.janitor import Janitor
from shared.settings import Settings

log = logging.getLogger("omega.api.janitor")


async def run_janitor(settings: Settings, sync_redis: SyncRedis, retention: BlobRetention | None = None) -> None:
    janitor = Janitor(sync_redis, settings, retention)

    async def sweep() -> float:
        await anyio.to_thread.run_sync(janitor.sweep)
        return settings.janitor_interval_s

    # An outage is routine here (every API process runs this): logged at debug only.
    await run_forever("janitor", sweep, log, outage_level=logging.DEBUG, error_pause_s=settings.janitor_interval_s)
