"""Run one micro-batch of jobs: images, prepare, generate, and one outcome per job.

Pure with respect to the queue: it takes payloads and returns `JobResult | JobError` in order,
so the queue bookkeeping (`shared.queue.worker`) stays separate. A job that cannot be prepared fails
alone; if a batched `generate` raises (e.g. out of memory), its rows are retried one by one so
only the row that really fails is failed.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from shared.contract import JobError, JobPayload, JobResult, TextPart, canceled_error, expired_error
from shared.errors import ServiceError
from workers import metrics
from workers.batch import PreparedRow
from workers.engine import Engine, RowOutput
from workers.images import ImageLoader
from workers.read_ahead import ReadAhead
from workers.sampling import RowPlan

log = logging.getLogger("omega.worker.runner")


@dataclass(frozen=True)
class MicroBatchItem:
    payload: JobPayload
    enqueued_at: float  # unix time the job entered its queue


Outcome = JobResult | JobError


def row_result(
    output: RowOutput, *, queue_seconds: float, generation_seconds: float, micro_batch: tuple[str, int], worker: str
) -> JobResult:
    """A finished row's result (either engine), counted in the worker's metrics."""
    metrics.GENERATED_TOKENS.inc(output.completion_tokens)
    metrics.PROMPT_TOKENS.inc(output.prompt_tokens)
    if output.first_token_seconds is not None:
        metrics.TIME_TO_FIRST_TOKEN.observe(output.first_token_seconds)
    return JobResult(
        text=output.text,
        finish_reason=output.finish_reason,
        prompt_tokens=output.prompt_tokens,
        completion_tokens=output.completion_tokens,
        truncated_prompt_tokens=output.truncated_prompt_tokens,
        queue_seconds=max(0.0, queue_seconds),
        generation_seconds=generation_seconds,
        first_token_seconds=output.first_token_seconds,
        micro_batch_id=micro_batch[0],
        micro_batch_size=micro_batch[1],
        worker=worker,
        seed=output.seed,
    )


def job_error(exc: Exception, job_id: str) -> JobError:
    if isinstance(exc, ServiceError):
        return JobError(
            status=exc.status_code, type=exc.error_type, message=exc.message, param=exc.param, code=exc.code
        )
    log.error("job %s failed", job_id, exc_info=exc)
    return JobError(
        status=500, type="server_error", message=f"generation failed (job {job_id})", code="generation_failed"
    )


class MicroBatchRunner:
    def __init__(self, engine: Engine, images: ImageLoader, worker_name: str) -> None:
        self.engine = engine
        self.images = images
        self.worker_name = worker_name
        self._lock = threading.Lock()
        self._canceled: set[str] = set()
        self._active: dict[str, RowPlan] = {}
        self.read_ahead = ReadAhead(engine, images, capacity=2 * engine.settings.max_batch_size)

    def _prepare(self, items: Sequence[MicroBatchItem]) -> tuple[list[PreparedRow | None], dict[int, Outcome]]:
        ahead = [self.read_ahead.take(item.payload) for item in items]
        loaded = self.images.load_many(
            d for item, row in zip(items, ahead, strict=True) if row is None for d in item.payload.image_blobs
        )
        rows: list[PreparedRow | None] = []
        failures: dict[int, Outcome] = {}
        for index, item in enumerate(items):
            if ahead[index] is not None:
                rows.append(ahead[index])
                continue
            try:
                images: list[Image.Image] = []
                for digest in item.payload.image_blobs:
                    image = loaded[digest]
                    if isinstance(image, ServiceError):
                        raise image
                    images.append(image)
                rows.append(self.engine.prepare(item.payload, images))
            except Exception as exc:
                rows.append(None)
                failures[index] = job_error(exc, item.payload.id)
        return rows, failures

    def _generate(self, rows: Sequence[PreparedRow]) -> list[RowOutput | JobError]:
        try:
            return list(self.engine.generate(rows))
        except Exception as exc:
            if len(rows) == 1:
                return [job_error(exc, rows[0].job.id)]
            log.warning("generate call of %d rows failed (%s); retrying rows one by one", len(rows), exc)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return [out for row in rows for out in self._generate([row])]

    # --- cancellation (called from the heartbeat thread) -----------------------------------
    def request_cancel(self, job_ids: Sequence[str]) -> None:
        """Stop these jobs: rows not started yet never run, running rows end at the next step."""
        with self._lock:
            self._canceled.update(job_ids)
            for job_id in job_ids:
                plan = self._active.get(job_id)
                if plan is not None:
                    plan.cancel_requested = True

    def _is_canceled(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._canceled

    def _screen(self, items: Sequence[MicroBatchItem]) -> dict[int, Outcome]:
        """Outcomes of jobs that must not run: past their deadline, or canceled already."""
        now = time.time()
        out: dict[int, Outcome] = {}
        for index, item in enumerate(items):
            job = item.payload
            if job.expires_at is not None and now > job.expires_at:
                out[index] = expired_error(job.id)
            elif self._is_canceled(job.id):
                out[index] = canceled_error(job.id, running=False)
        return out

    def _crash_if_asked(self, items: Sequence[MicroBatchItem]) -> None:
        """Testing only (FAULT_KILL_MARKER): die the way a poison request kills a worker."""
        marker = self.engine.settings.fault_kill_marker
        texts = (p.text for i in items for m in i.payload.messages for p in m.content if isinstance(p, TextPart))
        if marker and any(marker in t for t in texts):
            log.error("FAULT_KILL_MARKER found in a job: killing this worker (fault-injection test)")
            os.kill(os.getpid(), signal.SIGKILL)

    def run(self, items: Sequence[MicroBatchItem]) -> list[Outcome]:
        started = time.time()
        self._crash_if_asked(items)
        outcomes = self._screen(items)
        live = [i for i in range(len(items)) if i not in outcomes]
        rows, failures = self._prepare([items[i] for i in live])
        outcomes.update({live[k]: v for k, v in failures.items()})
        ready = [(live[k], row) for k, row in enumerate(rows) if row is not None]
        with self._lock:
            for _, row in ready:
                self._active[row.job.id] = row.plan
                row.plan.cancel_requested = row.job.id in self._canceled
        micro_batch_id = uuid.uuid4().hex[:12]
        t0 = time.perf_counter()
        try:
            outputs = self._generate([row for _, row in ready]) if ready else []
        finally:
            with self._lock:
                for _, row in ready:
                    self._active.pop(row.job.id, None)
                self._canceled.difference_update(item.payload.id for item in items)
        elapsed = time.perf_counter() - t0
        if ready:
            metrics.BATCH_SIZE.observe(len(ready))
            metrics.GENERATE_SECONDS.observe(elapsed)
            metrics.IMAGES.inc(sum(len(row.job.image_blobs) for _, row in ready))
            metrics.IMAGE_CACHE.labels("hit").set(self.images.cache.hits)
            metrics.IMAGE_CACHE.labels("miss").set(self.images.cache.misses)
        for (index, row), output in zip(ready, outputs, strict=True):
            if isinstance(output, JobError):
                outcomes[index] = output
            elif row.plan.cancel_step is not None:
                outcomes[index] = canceled_error(row.job.id, running=True)
            else:
                outcomes[index] = row_result(
                    output,
                    queue_seconds=started - items[index].enqueued_at,
                    generation_seconds=elapsed,
                    micro_batch=(micro_batch_id, len(ready)),
                    worker=self.worker_name,
                )
        return [outcomes[i] for i in range(len(items))]
