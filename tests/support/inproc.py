"""The in-process service for the fast API tier: the real app under Litestar's test client and a
real rq burst worker on the demo model, in this process, against the session's redis-server.

Nothing here spawns a process. The worker is built exactly as tests/workers/test_rq_worker.py
builds it (the one place to change when the worker's classes move or are renamed).

Why the worker drains in a thread: Litestar's AsyncTestClient runs the app on its own event loop
in a portal thread and blocks the caller's loop for the whole request, so a test cannot await a
chat completion and run the worker on the same thread. The worker thread waits for the job the
request enqueues, drains the queue in burst mode and stops.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import torch
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis

from api.app import create_app
from shared import keys
from shared.blobstore import create_blob_store
from shared.fleet import WorkerInfo
from shared.settings import Settings
from shared.settings_sources import load_settings
from tests.support.images import ALLOW_NETWORK
from workers.engine import Engine
from workers.fleet_member import FleetMember
from workers.images import ImageLoader
from workers.loader import load_model
from workers.rq_worker import BatchWorker
from workers.runner import BatchRunner

# The e2e stacks count up from db 0; tests/workers and tests/api/test_admission use 12-15.
DB = 10


def service_settings(redis_url: str, workdir: Path, model_dir: Path, **env: str) -> Settings:
    """Settings as the e2e stacks give their processes, with a local blob directory shared by
    the app and the in-process worker instead of S3."""
    return load_settings(
        environ={
            "REDIS_URL": redis_url,
            "MODEL_PATH": str(model_dir),
            "DATA_DIR": str(workdir),
            "BLOB_STORE": "local",
            "BLOB_DIR": str(workdir / "blobs"),
            "IMAGE_FETCH_ALLOW_NETWORKS": ALLOW_NETWORK,
            "WORKER_HEARTBEAT_S": "0.5",
            "WORKER_TTL_S": "3",
            "REQUEST_TIMEOUT_S": "60",
            **env,
        }
    )


@asynccontextmanager
async def api_client(settings: Settings, **headers: str) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The app with its lifespan run (real Redis pools, blob store, background loops)."""
    async with AsyncTestClient(app=create_app(settings), timeout=60) as client:
        client.headers.update(headers)
        yield client


def load_engine(model_dir: Path) -> Engine:
    """The demo model on the CPU, one thread, warmed up (as tests/workers/conftest.py loads it)."""
    torch.set_num_threads(1)
    settings = load_settings(environ={"MODEL_PATH": str(model_dir), "MAX_INPUT_TOKENS": "64"})
    engine = Engine(load_model(settings, torch.device("cpu"), lambda _: None), settings)
    engine.warmup()
    return engine


class _ThreadedBatchWorker(BatchWorker):
    """rq installs SIGINT/SIGTERM handlers in work(), which Python allows only on the main
    thread; a burst worker that stops when its queue is empty needs none."""

    def _install_signal_handlers(self) -> None:
        pass


class InProcessWorker:
    """A ready fleet member serving the demo model: routed to by the app like a worker process,
    but it runs jobs only when a test drains its queue."""

    def __init__(self, engine: Engine, settings: Settings, worker_id: str = "inproc-cpu0") -> None:
        self.engine = engine
        self.settings = settings
        self.redis = Redis.from_url(settings.redis_url)
        self.queue = keys.worker_queue(worker_id)
        now = time.time()
        info = WorkerInfo(
            id=worker_id,
            queue=self.queue,
            host="inproc",
            pid=os.getpid(),
            device="cpu",
            device_name="cpu",
            capacity=settings.max_batch_size,
            state="ready",
            started_at=now,
            heartbeat_at=now,
            model=engine.m.card,
        )
        self.member = FleetMember(self.redis, info, period_s=settings.worker_heartbeat_s, ttl_s=settings.worker_ttl_s)
        self.runner = BatchRunner(engine, ImageLoader(create_blob_store(settings), engine.settings), worker_id)
        self.batch_sizes: list[int] = []

    def join(self) -> None:
        self.member.start()

    def leave(self) -> None:
        self.member.leave()

    def waiting(self) -> int:
        return int(self.redis.llen(keys.rq_queue_key(self.queue)))

    def drain(self) -> None:
        """Run every job waiting on this worker's queue, in micro-batches, then return."""
        worker = _ThreadedBatchWorker(
            [self.queue],
            connection=self.redis,
            name=self.member.info.rq_name,
            runner=self.runner,
            max_batch_size=self.settings.max_batch_size,
            batch_timeout_ms=0,
            default_result_ttl=self.settings.result_ttl_s,
            on_batch=lambda size, _seconds: self.batch_sizes.append(size),
        )
        self.redis.delete(worker.key)  # the previous drain's record (same name) must not block this one
        worker.work(burst=True, logging_level="WARNING")

    @contextmanager
    def serving(self, timeout_s: float = 60) -> Iterator[None]:
        """Drain in a thread whenever jobs wait, while the body makes (blocking) requests."""
        stop = threading.Event()
        failures: list[BaseException] = []

        def loop() -> None:
            deadline = time.monotonic() + timeout_s
            try:
                while not stop.is_set() and time.monotonic() < deadline:
                    if self.waiting():
                        self.drain()
                    else:
                        stop.wait(0.01)
            except BaseException as exc:  # re-raised on the test's thread
                failures.append(exc)

        thread = threading.Thread(target=loop, name="inproc-worker", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout_s)
        if failures:
            raise failures[0]
