"""The in-process API tier: the real app (Litestar's AsyncTestClient, lifespan included) on the
session's redis-server, with an in-process demo-model worker. No process is spawned.

tests/support/inproc.py is imported inside the fixtures: it loads torch, which the pure unit
tests of this folder do not need.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis

from shared.settings import Settings
from tests.conftest import STRICT_KEY
from tests.support.assertions import job_keys
from tests.support.procs import RedisServer

if TYPE_CHECKING:
    from tests.support.inproc import InProcessWorker
    from workers.engine import Engine

Client = AsyncTestClient[Litestar]
# The limits of the strict API in tests/conftest.py's `strict_api`, for the same cases.
STRICT_ENV = {
    "API_KEY": STRICT_KEY,
    "ALLOW_REMOTE_IMAGES": "0",
    "MAX_REQUEST_BYTES": "300000",
    "MAX_IMAGES_PER_REQUEST": "2",
    "MAX_QUEUE_SIZE": "2",
}


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def inproc_engine(demo_model_dir: Path) -> Engine:
    from tests.support.inproc import load_engine

    return load_engine(demo_model_dir)


@pytest.fixture(scope="module")
def inproc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inproc")


@pytest.fixture(scope="module")
def inproc_settings(redis_server: RedisServer, inproc_dir: Path, demo_model_dir: Path) -> Settings:
    """Open API settings on a freshly emptied database (each test module starts clean)."""
    from tests.support.inproc import DB, service_settings

    redis_server.client(DB).flushdb()
    return service_settings(redis_server.url(DB), inproc_dir, demo_model_dir)


@pytest.fixture(scope="module")
def inproc_worker(inproc_engine: Engine, inproc_settings: Settings) -> Iterator[InProcessWorker]:
    """A ready worker in the fleet; it runs jobs when a test drains it or serves with it."""
    from tests.support.inproc import InProcessWorker

    worker = InProcessWorker(inproc_engine, inproc_settings)
    worker.join()
    yield worker
    worker.leave()


@pytest.fixture(scope="module")
async def client(inproc_settings: Settings, inproc_worker: InProcessWorker) -> AsyncIterator[Client]:
    """The open API (no key), as the e2e `stack` runs it."""
    from tests.support.inproc import api_client

    async with api_client(inproc_settings) as c:
        yield c


@pytest.fixture(scope="module")
async def strict_client(
    redis_server: RedisServer, inproc_dir: Path, demo_model_dir: Path, inproc_worker: InProcessWorker
) -> AsyncIterator[Client]:
    """A second API on the same fleet: key on, remote images off, small limits. Sends no key:
    each request says which it sends."""
    from tests.support.inproc import DB, api_client, service_settings

    settings = service_settings(redis_server.url(DB), inproc_dir, demo_model_dir, **STRICT_ENV)
    async with api_client(settings) as c:
        yield c


@pytest.fixture
def redis(inproc_settings: Settings) -> Iterator[Redis]:
    client = Redis.from_url(inproc_settings.redis_url)
    yield client
    client.close()


@pytest.fixture
def no_new_jobs(redis: Redis) -> Iterator[None]:
    before = job_keys(redis)
    yield
    assert job_keys(redis) == before, "a bad request created a job"
