"""The worker's side of a micro-batch that is not queue bookkeeping: decode, run the model, count.

shared/queue/worker.py pulls, starts and finishes the jobs (rq's bookkeeping); `ModelHandler`
turns the started jobs into payloads, prepares the next micro-batch's rows while this one
generates, watches for cancel requests and runs `MicroBatchRunner`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis

from shared.contract import JobError, decode_payload, outcome_status
from shared.queue.worker import MicroBatch, MicroBatchWorker, Outcome, enqueued_at, payload_bytes
from workers import metrics
from workers.cancel_watch import CancelWatch
from workers.runner import MicroBatchItem, MicroBatchRunner, job_error

log = logging.getLogger("omega.worker.micro_batch")


class ModelHandler:
    """Runs a micro-batch on the model (a `shared.queue.worker.MicroBatchHandler`)."""

    def __init__(
        self, runner: MicroBatchRunner, redis: Redis, on_micro_batch: Callable[[int, float], None] | None = None
    ) -> None:
        self.runner = runner
        self.cancels = CancelWatch(redis, runner.request_cancel)
        self.on_micro_batch = on_micro_batch
        self._size = 0
        self._began = 0.0

    def run(self, batch: MicroBatch) -> list[Outcome]:
        items: list[tuple[int, MicroBatchItem]] = []
        outcomes: dict[int, Outcome] = {}
        for index, started in enumerate(batch.jobs):
            try:
                items.append((index, MicroBatchItem(decode_payload(payload_bytes(started)), enqueued_at(started))))
            except Exception as exc:  # a job this worker cannot even read fails alone
                outcomes[index] = job_error(exc, started.id)
        self._size, self._began = len(items), time.perf_counter()
        self._prefetch_next(batch, images=any(b.payload.image_blobs for _, b in items))
        try:
            with self.cancels.watching([b.payload.id for _, b in items]):
                results = self.runner.run([b for _, b in items]) if items else []
        except Exception as exc:  # the runner isolates failures; this is a last line of defence
            results = [job_error(exc, b.payload.id) for _, b in items]
        for (index, _), outcome in zip(items, results, strict=True):
            outcomes[index] = outcome
        return [outcomes[index] for index in range(len(batch.jobs))]

    def failed(self, exc: Exception, job_id: str) -> JobError:
        return job_error(exc, job_id)

    def recorded(self, outcomes: list[Outcome], written: bool) -> None:
        if written:
            for outcome in outcomes:
                metrics.JOBS.labels(outcome_status(outcome)).inc()
        if self.on_micro_batch:
            self.on_micro_batch(self._size, time.perf_counter() - self._began)

    def _prefetch_next(self, batch: MicroBatch, images: bool) -> None:
        """While this micro-batch generates, prepare the rows of the jobs waiting next (images
        fetched and decoded, processor run: workers/read_ahead.py).

        Only after a micro-batch with images: reading the waiting jobs costs the generating
        process CPU (13% of a text-only batch's throughput on the demo model), and workloads
        come in runs (a captioning job is all images, a chat workload mostly text)."""
        if self.runner.images.cache.capacity > 0 and batch.more_waiting and images:
            threading.Thread(target=self._prefetch, args=(batch,), name="prefetch", daemon=True).start()

    def _prefetch(self, batch: MicroBatch) -> None:
        try:
            self.runner.read_ahead.prepare([decode_payload(data) for data in batch.peek_waiting()])
        except Exception:  # an optimisation only: the micro-batch loads what it needs itself
            log.debug("prefetch failed", exc_info=True)


def model_worker(
    queues: list[Any],
    *,
    connection: Redis,
    runner: MicroBatchRunner,
    max_batch_size: int,
    batch_timeout_ms: float,
    on_micro_batch: Callable[[int, float], None] | None = None,
    **rq_options: Any,
) -> MicroBatchWorker:
    """A queue worker that runs its micro-batches on `runner`'s model."""
    return MicroBatchWorker(
        queues,
        connection=connection,
        handler=ModelHandler(runner, connection, on_micro_batch),
        max_batch_size=max_batch_size,
        batch_timeout_ms=batch_timeout_ms,
        **rq_options,
    )
