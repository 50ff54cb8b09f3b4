"""Long-lived connections and the slices' services of one API process, opened in the app's lifespan.

Each controller receives the one service it needs by name (`chat_service`, `submit_poll_service`,
`batch_service`, `file_service`, `ops_service`); `SERVICE_DEPENDENCIES` is registered once, on the
application; no controller reads `app.state` itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry as SyncRetry

from api.batches.advancer import BatchAdvancer
from api.batches.service import BatchService
from api.chat.service import ChatService
from api.dispatch.dispatcher import Dispatcher
from api.dispatch.feeder import LaneFeeder
from api.dispatch.fleet_view import FleetView
from api.dispatch.janitor_loop import run_janitor
from api.files.service import FileService
from api.intake.images import ImageIntake
from api.intake.remote_fetch import RemoteImageFetcher
from api.jobs.service import JobService
from api.jobs.submit_poll import SubmitPollService
from api.ops.service import OpsService
from shared.blob_retention import BlobRetention
from shared.blobstore import create_blob_store
from shared.redis_connect import RedisTarget, async_client, sync_client
from shared.settings import Settings


@dataclass(frozen=True)
class Services:
    """The one instance of each slice's service (app.state.services)."""

    chat: ChatService
    submit_poll: SubmitPollService
    batches: BatchService
    files: FileService
    ops: OpsService


def _redis(settings: Settings, *, blocking: bool) -> Redis:
    # Every command has a deadline, so a dead Redis becomes a quick 503, never a hang. Blocking
    # reads (XREAD BLOCK) get their own pool and rely on asyncio.wait_for for their deadline.
    # After a Redis restart every pooled connection is stale: one immediate retry on a fresh
    # connection hides that from clients, while a Redis that is still down fails the retry fast.
    # With Sentinel, the same retry lands on the new primary after a failover.
    return async_client(
        RedisTarget.from_settings(settings),
        blocking_pool=True,
        max_connections=4096 if blocking else 256,
        timeout=5,
        socket_connect_timeout=2,
        socket_timeout=None if blocking else 5,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )


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
    sync_redis = sync_client(
        RedisTarget.from_settings(settings),
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
    retention = BlobRetention(sync_redis, store, settings.blob_ttl_s)
    intake = ImageIntake(settings, store, fetcher, retention)
    files = FileService(settings, redis, store)
    batches = BatchService(redis, files)
    chat = ChatService(settings, intake, fleet, dispatcher, jobs)
    app.state.services = Services(
        chat=chat,
        submit_poll=SubmitPollService(settings, jobs, chat, dispatcher),
        batches=batches,
        files=files,
        ops=OpsService(settings, redis, fleet, store, intake, app.state.started_at),
    )
    # Background loops every API process runs; each takes a Redis lock for its work, so any
    # number of API replicas cooperate and one dying is replaced by another.
    advancer = BatchAdvancer(settings, redis, sync_redis, batches, files, jobs, dispatcher, intake)
    tasks = [
        asyncio.create_task(LaneFeeder(settings, redis, sync_redis, fleet).run(), name="feeder"),
        asyncio.create_task(advancer.run(), name="batch-advancer"),
        asyncio.create_task(run_janitor(settings, sync_redis, retention), name="janitor"),
    ]
    try:
        yield
    finally:
        await _stop(tasks)
        await fetcher.close()
        await redis.aclose()
        await blocking.aclose()
        sync_redis.close()


def _services(state: State) -> Services:
    services: Services = state.services
    return services


def provide_chat_service(state: State) -> ChatService:
    return _services(state).chat


def provide_submit_poll_service(state: State) -> SubmitPollService:
    return _services(state).submit_poll


def provide_batch_service(state: State) -> BatchService:
    return _services(state).batches


def provide_file_service(state: State) -> FileService:
    return _services(state).files


def provide_ops_service(state: State) -> OpsService:
    return _services(state).ops


SERVICE_DEPENDENCIES = {
    "chat_service": Provide(provide_chat_service, sync_to_thread=False),
    "submit_poll_service": Provide(provide_submit_poll_service, sync_to_thread=False),
    "batch_service": Provide(provide_batch_service, sync_to_thread=False),
    "file_service": Provide(provide_file_service, sync_to_thread=False),
    "ops_service": Provide(provide_ops_service, sync_to_thread=False),
}
