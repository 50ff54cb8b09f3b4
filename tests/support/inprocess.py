"""The API in-process: create_app over a real Redis, driven by Litestar's AsyncTestClient."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar.testing import AsyncTestClient
from redis import Redis

from api.app import create_app
from shared.settings import Settings
from shared.settings_sources import load_settings


def inprocess_settings(redis_url: str, **env: str) -> Settings:
    """Settings for an in-process API on `redis_url` (a db of its own, flushed), blobs in a temp dir."""
    Redis.from_url(redis_url).flushdb()
    base = {"REDIS_URL": redis_url, "DATA_DIR": tempfile.mkdtemp(prefix="omega-inproc-")}
    return load_settings(environ={**base, **env})


@asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The app with its lifespan (services and background loops) running."""
    async with AsyncTestClient(app=create_app(settings), timeout=30) as client:
        yield client
