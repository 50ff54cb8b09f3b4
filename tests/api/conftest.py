"""The in-process API tier: the real app (Litestar's AsyncTestClient, lifespan included) on the
session's redis-server. No process is spawned.

`client` and `strict_client` route to the `fleet` fixture: by default the record of a ready
worker without a model (tests of refused requests need no more and load no torch); a module that
needs real completions overrides `fleet` with `inproc_worker`, which serves the demo model.
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
from tests.support.inproc import DB, api_client, fleet_member, service_settings
from tests.support.procs import RedisServer

if TYPE_CHECKING:
    from tests.support.inproc_worker import InProcessWorker
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


@pytest.fixture(scope="module")
def inproc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inproc")


@pytest.fixture(scope="module")
def inproc_settings(redis_server: RedisServer, inproc_dir: Path) -> Settings:
    """Open API settings on a freshly emptied database (each test module starts clean)."""
    redis_server.client(DB).flushdb()
    return service_settings(redis_server.url(DB), inproc_dir)


@pytest.fixture(scope="module")
def fleet(inproc_settings: Settings) -> Iterator[object]:
    """A ready worker in the fleet that never runs anything: requests are refused before that."""
    member = fleet_member(inproc_settings)
    member.start()
    yield member
    member.leave()


@pytest.fixture(scope="session")
def inproc_engine(demo_model_dir: Path) -> Engine:
    from tests.support.inproc_worker import load_engine

    return load_engine(demo_model_dir)


@pytest.fixture(scope="module")
def inproc_worker(inproc_engine: Engine, inproc_settings: Settings) -> Iterator[InProcessWorker]:
    """A ready worker with the demo model; it runs jobs when a test drains it or serves with it."""
    from tests.support.inproc_worker import InProcessWorker

    worker = InProcessWorker(inproc_engine, inproc_settings)
    worker.join()
    yield worker
    worker.leave()


@pytest.fixture(scope="module")
async def client(inproc_settings: Settings, fleet: object) -> AsyncIterator[Client]:
    """The open API (no key), as the e2e `stack` runs it."""
    async with api_client(inproc_settings) as c:
        yield c


@pytest.fixture(scope="module")
async def strict_client(inproc_settings: Settings, inproc_dir: Path, fleet: object) -> AsyncIterator[Client]:
    """A second API on the same fleet: key on, remote images off, small limits. Sends no key:
    each request says which it sends."""
    async with api_client(service_settings(inproc_settings.redis_url, inproc_dir, **STRICT_ENV)) as c:
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
