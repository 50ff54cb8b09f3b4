"""A real rq burst worker on the demo model, in the test process, for the in-process API tier.

Built exactly as tests/workers/test_rq_worker.py builds the worker: the one place to change when
the worker's classes move or are renamed.

Why it drains in a thread: Litestar's AsyncTestClient runs the app on its own event loop in a
portal thread and blocks the caller's loop for the whole request, so a test cannot await a chat
completion and run the worker on the same thread. `serving()` drains in a thread whenever jobs
wait; `drain()` runs what already waits (a submitted job) on the caller's thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from redis import Redis

from shared.blobstore import create_blob_store
from shared.queue import names
from shared.queue.worker import MicroBatchWorker
from shared.settings import Settings
from shared.settings_sources import load_settings
from tests.support.inproc import WORKER_ID, fleet_member
from workers.decode_floor import decode_floor
from workers.engine import Engine
from workers.images import ImageLoader
from workers.loader import load_model
from workers.micro_batches import ModelHandler
from workers.runner import MicroBatchRunner


def load_engine(model_dir: Path) -> Engine:
    """The demo model on the CPU, one thread, warmed up (as tests/workers/conftest.py loads it)."""
    torch.set_num_threads(1)
    settings = load_settings(environ={"MODEL_PATH": str(model_dir), "MAX_INPUT_TOKENS": "64"})
    engine = Engine(load_model(settings, torch.device("cpu"), lambda _: None), settings)
    engine.warmup()
    return engine


class _ThreadedWorker(MicroBatchWorker):
    """rq installs SIGINT/SIGTERM handlers in work(), which Python allows only on the main
    thread; a burst worker that stops when its queue is empty needs none."""

    def _install_signal_handlers(self) -> None:
        pass


class InProcessWorker:
    """A ready fleet member serving the demo model: the app routes to it as to a worker process,
    but it runs jobs only when a test drains its queue."""

    def __init__(self, engine: Engine, settings: Settings, worker_id: str = WORKER_ID) -> None:
        self.settings = settings
        self.member = fleet_member(settings, engine.m.card, worker_id)
        self.redis: Redis = self.member.redis
        self.queue = self.member.info.queue
        images = ImageLoader(create_blob_store(settings), engine.settings, floor=decode_floor(engine.m.processor))
        self.runner = MicroBatchRunner(engine, images, worker_id)
        self.batch_sizes: list[int] = []

    def join(self) -> None:
        self.member.start()

    def leave(self) -> None:
        self.member.leave()

    def waiting(self) -> int:
        return int(self.redis.llen(names.queue_key(self.queue)))

    def drain(self) -> None:
        """Run every job waiting on this worker's queue, in micro-batches, then return."""
        worker = _ThreadedWorker(
            [self.queue],
            connection=self.redis,
            name=self.member.info.rq_name,
            handler=ModelHandler(self.runner, self.redis, lambda size, _seconds: self.batch_sizes.append(size)),
            max_batch_size=self.settings.max_batch_size,
            batch_timeout_ms=0,
            default_result_ttl=self.settings.result_ttl_s,
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
