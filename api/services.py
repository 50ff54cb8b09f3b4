"""Long-lived connections and helpers of one API process, opened in the app's lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from litestar import Litestar
from litestar.datastructures import State
from redis import Redis as SyncRedis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry as SyncRetry

from api.batch_runner import BatchRunner
from api.batches import BatchService
from api.dispatch import Dispatcher
from api.feeder import LaneFeeder
from api.files import FileService
from api.fleet_view import FleetView
from api.image_intake import ImageIntake
from api.janitor_loop import run_janitor
from api.jobs import JobService
from api.remote_fetch import RemoteImageFetcher
from shared.blobstore import BlobStore, create_blob_store
from shared.settings import Settings


@dataclass
class Services:
    settings: Settings
    redis: Redis
    blob_store: BlobStore
    fleet: FleetView
    intake: ImageIntake
    dispatcher: Dispatcher
    jobs: JobService
    files: FileService
    batches: BatchService


def _redis(settings: Settings, *, blocking: bool) -> Redis:
    # Every command has a deadline, so a dead Redis becomes a quick 503, never a hang. Blocking
    # reads (XREAD BLOCK) get their own pool and rely on asyncio.wait_for for their deadline.
    # After a Redis restart every pooled connection is stale: one immediate retry on a fresh
    # connection hides that from clients, while a Redis that is still down fails the retry fast.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=4096 if blocking else 256,
        timeout=5,
        socket_connect_timeout=2,
        socket_timeout=None if blocking else 5,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return Redis(connection_pool=pool)


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel until every task has ended: redis-py's asyncio client (8.1, on Python 3.11) can
    swallow a cancellation that lands mid-command, and the loop would then run on forever,
    holding up shutdown (tests/api/test_lifespan.py)."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    await asyncio.gather(*tasks, return_exceptions=True)  # all ended: collects their exceptions


@asynccontextmanager
async def services_lifespan(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    redis = _redis(settings, blocking=False)
    blocking = _redis(settings, blocking=True)
    sync_redis = SyncRedis.from_url(
        settings.redis_url,
        socket_connect_timeout=2,
        socket_timeout=5,
        # redis-py's default (ten retries with backoff) would hold a request for seconds while
        # Redis is down; one immediate retry covers a stale connection after a restart.
        retry=SyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    fetcher = RemoteImageFetcher(settings)
    store = create_blob_store(settings)
    fleet = FleetView(redis, settings)
    dispatcher = Dispatcher(settings, redis, blocking, sync_redis, fleet)
    jobs = JobService(settings, redis, sync_redis, fleet, dispatcher)
    intake = ImageIntake(settings, store, fetcher)
    files = FileService(settings, redis, store)
    batches = BatchService(redis, files)
    app.state.services = Services(
        settings=settings,
        redis=redis,
        blob_store=store,
        fleet=fleet,
        intake=intake,
        dispatcher=dispatcher,
        jobs=jobs,
        files=files,
        batches=batches,
    )
    # Background loops every API process runs; each takes a Redis lock for its work, so any
    # number of API replicas cooperate and one dying is replaced by another.
    runner = BatchRunner(settings, redis, sync_redis, batches, files, jobs, dispatcher, intake)
    tasks = [
        asyncio.create_task(LaneFeeder(settings, redis, sync_redis, fleet, jobs).run(), name="feeder"),
        asyncio.create_task(runner.run(), name="batch-runner"),
        asyncio.create_task(run_janitor(settings, sync_redis), name="janitor"),
    ]
    try:
        yield
    finally:
        await _stop(tasks)
        await fetcher.close()
        await redis.aclose()
        await blocking.aclose()
        sync_redis.close()


def get_services(state: State) -> Services:
    services: Services = state.services
    return services
