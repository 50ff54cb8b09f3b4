"""Runs the janitor (shared/janitor.py) from every API process; its lock makes one sweep at a time."""

from __future__ import annotations

import asyncio
import logging

import anyio.to_thread
from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from shared.janitor import Janitor
from shared.settings import Settings

log = logging.getLogger("omega.api.janitor")


async def run_janitor(settings: Settings, sync_redis: SyncRedis) -> None:
    janitor = Janitor(sync_redis, settings)
    while True:
        try:
            await anyio.to_thread.run_sync(janitor.sweep)
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            log.debug("janitor paused: %s", exc)
        except Exception:
            log.exception("janitor sweep failed")
        await asyncio.sleep(settings.janitor_interval_s)
