"""An rq worker that runs jobs in micro-batches, in-process (no fork: the model stays resident).

rq's loop dequeues the first job (atomically moved to the queue's intermediate list, since a
worker listens on exactly one queue). `execute_job` then pulls up to MAX_BATCH_SIZE-1 more with
the same atomic move, waiting at most BATCH_TIMEOUT_MS, gives every job the bookkeeping rq gives
one (execution record, started registry, heartbeats), runs the batch, and finishes each job
through rq's own success/failure handlers, so every job ends in rq's finished or failed registry
and its result lands on the results stream the API blocks on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.results import Result
from rq.utils import now, utcformat
from rq.worker import SimpleWorker, WorkerStatus

from shared import keys
from shared.contract import CANCELED, EXPIRED, JobError, JobResult, decode_payload, encode, encode_error
from shared.serializer import MsgpackSerializer
from workers import metrics
from workers.cancel_watch import CancelWatch
from workers.runner import BatchItem, BatchRunner, job_error

log = logging.getLogger("omega.worker.rq")
HEARTBEAT_EVERY_S = 1.0
# How long a finished job's outcome is held while Redis is unreachable.
RECORD_PATIENCE_S = 600.0


@dataclass
class Running:
    job: Job
    execution: Execution
    batch_id: str | None = None  # the OpenAI batch this job belongs to, for its live counts


def batch_counter(outcome: JobResult | JobError) -> str:
    """Which of an OpenAI batch's counters a finished job bumps."""
    if isinstance(outcome, JobResult):
        return "completed"
    return "canceled" if outcome.code in (CANCELED, EXPIRED) else "failed"


def mark_ended(pipe: Any, job: Job, ended: datetime) -> None:
    """Only a job's status and end time change when it ends: write those two fields, not the
    whole job (payload and all) as rq's Job.save would."""
    pipe.hset(job.key, mapping={"status": job._status.value, "ended_at": utcformat(ended)})


class BatchWorker(SimpleWorker):
    """SimpleWorker whose unit of work is a micro-batch of jobs from its one queue."""

    # Reconnect quickly after a Redis outage instead of rq's default 60 s ceiling.
    max_connection_wait_time = 2.0

    def __init__(
        self,
        *args: Any,
        runner: BatchRunner,
        max_batch_size: int,
        batch_timeout_ms: float,
        on_batch: Callable[[int, float], None] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("serializer", MsgpackSerializer)
        super().__init__(*args, **kwargs)
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.batch_timeout_s = batch_timeout_ms / 1000.0
        self.on_batch = on_batch
        self.running: list[Running] = []
        self._running_lock = threading.Lock()
        self.shutdown_requested = False
        self._beat_at = 0.0
        self._more_waiting = False
        self.cancels = CancelWatch(self.connection, self.runner.request_cancel)

    def request_stop(self, signum: Any, frame: Any) -> None:
        """SIGTERM/SIGINT: stop pulling, finish the batch in hand, then leave (rq's warm shutdown)."""
        self.shutdown_requested = True
        super().request_stop(signum, frame)

    # --- pulling a batch -------------------------------------------------------------------
    def _pull_one(self, queue: Queue, timeout_s: float) -> Job | None:
        conn: Redis = self.connection
        intermediate = queue.intermediate_queue_key
        while True:
            if timeout_s > 0:
                # Redis takes fractional seconds here; redis-py's stubs say int.
                raw = conn.blmove(queue.key, intermediate, timeout_s, "LEFT", "RIGHT")  # type: ignore[arg-type]
            else:
                raw = conn.lmove(queue.key, intermediate, "LEFT", "RIGHT")
            if raw is None:
                return None
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                return Job.fetch(job_id, connection=conn, serializer=self.serializer)
            except NoSuchJobError:  # deleted or expired while queued: drop it and look again
                conn.lrem(intermediate, 1, job_id)

    def _fetch_pulled(self, queue: Queue, raw_ids: list[Any]) -> list[Job]:
        ids = [raw.decode() for raw in raw_ids if raw is not None]
        if not ids:
            return []
        fetched = Job.fetch_many(ids, connection=self.connection, serializer=self.serializer)
        for job_id, job in zip(ids, fetched, strict=True):
            if job is None:  # deleted or expired while queued
                self.connection.lrem(queue.intermediate_queue_key, 1, job_id)
        return [job for job in fetched if job is not None]

    def _collect(self, first: Job, queue: Queue) -> tuple[list[Job], dict[str, Running]]:
        """The batch: `first`, what is already waiting, and what arrives within BATCH_TIMEOUT_MS.
        Returns the jobs and those already started (`first`: its start rides along with the
        pull of the waiting jobs, one round trip for both)."""
        wanted = self.max_batch_size - 1
        with self.connection.pipeline() as pipe:
            started = self._start_commands([first], queue, pipe)
            for _ in range(wanted):
                pipe.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")
            replies = pipe.execute()
        waiting = self._fetch_pulled(queue, replies[len(replies) - wanted :] if wanted else [])
        # A full pull means more may be waiting: worth prefetching their images meanwhile.
        self._more_waiting = wanted > 0 and len(waiting) == wanted
        jobs = [first, *waiting]
        deadline = time.monotonic() + self.batch_timeout_s
        # Take what is already waiting at once; wait for more only within the window.
        while len(jobs) < self.max_batch_size and not self._stop_requested:
            left = deadline - time.monotonic()
            job = self._pull_one(queue, left) if left > 0.001 else None
            if job is None:
                break
            jobs.append(job)
        return jobs, {item.job.id: item for item in started}

    # --- bookkeeping: rq's per-job steps, for the whole batch in one round trip each ---------
    # rq does these one job at a time in several round trips each (its success path alone WATCHes
    # for dependents, which our jobs never have); per batch that cost as much as generating.
    def _start_commands(self, jobs: list[Job], queue: Queue, pipe: Any) -> list[Running]:
        """rq's prepare_execution + prepare_job_execution, queued on `pipe`: execution records,
        started registry, job status and heartbeat, out of the intermediate list."""
        ttl = max(self.get_heartbeat_ttl(job) for job in jobs)
        started = []
        for job in jobs:
            execution = Execution.create(job, ttl, pipeline=pipe, worker_name=self.name)
            self.executions[execution.id] = execution
            job.heartbeat(now(), ttl, pipeline=pipe)
            job.prepare_for_execution(self.name, pipeline=pipe)
            pipe.persist(job.key)
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            started.append(Running(job, execution))
        self.set_state(WorkerStatus.BUSY, pipeline=pipe)
        self.heartbeat(ttl, pipeline=pipe)
        return started

    def _start_all(self, jobs: list[Job], queue: Queue, started: dict[str, Running]) -> list[Running]:
        """Start the jobs not started yet, in one round trip; all of them, in batch order."""
        todo = [job for job in jobs if job.id not in started]
        if todo:
            with self.connection.pipeline() as pipe:
                fresh = self._start_commands(todo, queue, pipe)
                pipe.execute()
            started = {**started, **{item.job.id: item for item in fresh}}
        return [started[job.id] for job in jobs]

    def _finish_all(self, done: list[tuple[Running, JobResult | JobError]]) -> None:
        """rq's success/failure handling for every job of the batch: status, result on the job's
        results stream (what the API waits on), finished/failed registry, execution cleanup,
        worker counters; plus our batch counters and cancel-request cleanup."""
        ended = now()
        with self.connection.pipeline() as pipe:
            for running, outcome in done:
                job, execution = running.job, running.execution
                job.ended_at = ended
                started_at = job.started_at or ended
                if isinstance(outcome, JobResult):
                    # rq's Job._handle_success, minus its full re-save of the job.
                    job._status = JobStatus.FINISHED
                    result_ttl = job.get_result_ttl(self.default_result_ttl)
                    mark_ended(pipe, job, ended)
                    Result.create(job, Result.Type.SUCCESSFUL, result_ttl, return_value=encode(outcome),
                                  worker_name=self.name, pipeline=pipe, execution_id=execution.id,
                                  execution_started_at=execution.created_at, execution_ended_at=ended)
                    if result_ttl != 0:
                        job.finished_job_registry.add(job, result_ttl, pipe)
                    job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
                    self.increment_successful_job_count(pipeline=pipe)
                else:
                    job._status = JobStatus.FAILED
                    mark_ended(pipe, job, ended)
                    job._handle_failure(
                        encode_error(outcome),
                        pipeline=pipe,
                        worker_name=self.name,
                        execution_id=execution.id,
                        execution_started_at=execution.created_at,
                        execution_ended_at=ended,
                    )
                    self.increment_failed_job_count(pipeline=pipe)
                self.increment_total_working_time(ended - started_at, pipe)
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                pipe.zrem(keys.CANCEL_REQUESTS, job.id)
                if running.batch_id is not None:
                    pipe.hincrby(keys.batch_record(running.batch_id), batch_counter(outcome), 1)
            pipe.execute()

    def maintain_running_heartbeats(self) -> None:
        """Called from the heartbeat thread: keeps long generations out of rq's abandoned-job
        cleanup."""
        with self._running_lock:
            running = list(self.running)
        if not running:
            return
        for item in running:
            try:
                self.maintain_heartbeats(item.job, item.execution)
            except Exception:  # a heartbeat must never kill the worker
                log.debug("heartbeat for job %s failed", item.job.id, exc_info=True)

    # --- rq's unit of work -----------------------------------------------------------------
    def execute_job(self, job: Job, queue: Queue) -> None:
        # Busy from here: a SIGTERM now means "finish this batch", not "stop at once".
        self.set_state(WorkerStatus.BUSY)
        jobs, started = ([job], {}) if _retried(job) else self._collect(job, queue)
        # A job that was running when a worker died runs alone: if it is what killed the
        # worker, it must not take a new set of batch-mates down with it.
        normal = [j for j in jobs if not _retried(j)]
        groups = ([normal] if normal else []) + [[j] for j in jobs if _retried(j)]
        try:
            for group in groups:
                self._run_group(group, queue, started)
        finally:
            self.set_state(WorkerStatus.IDLE)

    def _run_group(self, jobs: list[Job], queue: Queue, already: dict[str, Running]) -> None:
        started = self._start_all(jobs, queue, already)
        with self._running_lock:  # until recorded: heartbeats and cancellation cover them
            self.running = started
        try:
            items: list[tuple[int, BatchItem]] = []
            outcomes: dict[int, JobResult | JobError] = {}
            for index, item in enumerate(started):
                try:
                    payload = decode_payload(item.job.args[0])
                    enqueued = item.job.enqueued_at.timestamp() if item.job.enqueued_at else time.time()
                    items.append((index, BatchItem(payload, enqueued)))
                    item.batch_id = payload.batch_id
                except Exception as exc:  # a job this worker cannot even read fails alone
                    outcomes[index] = job_error(exc, item.job.id)
            began = time.perf_counter()
            self._prefetch_next(queue, images=any(b.payload.image_blobs for _, b in items))
            try:
                with self.cancels.watching([b.payload.id for _, b in items]):
                    results = self.runner.run([b for _, b in items]) if items else []
            except Exception as exc:  # the runner isolates failures; this is a last line of defence
                results = [job_error(exc, b.payload.id) for _, b in items]
            for (index, _), outcome in zip(items, results, strict=True):
                outcomes[index] = outcome
            self._record([(item, outcomes[index]) for index, item in enumerate(started)])
            if self.on_batch:
                self.on_batch(len(items), time.perf_counter() - began)
        finally:
            with self._running_lock:
                self.running = []

    def _prefetch_next(self, queue: Queue, images: bool) -> None:
        """While this batch generates, prepare the rows of the jobs waiting next (images fetched
        and decoded, processor run: workers/read_ahead.py).

        Only after a batch with images: reading the waiting jobs costs the generating process
        CPU (13% of a text-only batch's throughput on the demo model), and workloads come in
        runs (a captioning job is all images, a chat workload mostly text)."""
        if self.runner.images.cache.capacity > 0 and self._more_waiting and images:
            threading.Thread(target=self._prefetch, args=(queue,), name="prefetch", daemon=True).start()

    def _prefetch(self, queue: Queue) -> None:
        try:
            ids = [i.decode() for i in self.connection.lrange(queue.key, 0, self.max_batch_size - 1)]
            jobs = Job.fetch_many(ids, connection=self.connection, serializer=self.serializer)
            self.runner.read_ahead.prepare([decode_payload(job.args[0]) for job in jobs if job is not None])
        except Exception:  # an optimisation only: the batch loads what it needs itself
            log.debug("prefetch failed", exc_info=True)

    def _record(self, done: list[tuple[Running, JobResult | JobError]]) -> None:
        """Write the batch's outcomes, waiting out a Redis outage: the results are only in memory."""
        if self._patiently(lambda: self._finish_all(done), ", ".join(r.job.id for r, _ in done)):
            for _, outcome in done:
                metrics.JOBS.labels(_outcome_label(outcome)).inc()

    def _patiently(self, step: Callable[[], None], job_id: str) -> bool:
        delay = 0.5
        deadline = time.monotonic() + RECORD_PATIENCE_S
        while True:
            try:
                step()
                return True
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if time.monotonic() > deadline:
                    log.error("gave up recording job %s: %s (the janitor will run it again)", job_id, exc)
                    return False
                log.warning("could not record job %s (%s); retrying in %.1f s", job_id, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                log.exception("could not record the outcome of job %s", job_id)
                return False

    # rq's loop beats and records its state several times per job, each in its own round trips:
    # on a fast model that was most of the service's latency. The worker record's TTL is a minute,
    # so one beat a second is plenty; state changes ride along with the next beat or pipeline.
    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            pipeline.hset(self.key, "state", self._state)
            self._beat_at = time.monotonic()
            return
        if time.monotonic() - self._beat_at < HEARTBEAT_EVERY_S:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            self.heartbeat(timeout, pipeline=pipe)
            pipe.execute()

    def set_state(self, state: str, pipeline: Any = None) -> None:
        self._state = state
        if pipeline is not None:
            pipeline.hset(self.key, "state", state)

    # --- maintenance belongs to the janitor -----------------------------------------------
    def clean_registries(self) -> None:
        """rq's own cleanup would fail abandoned jobs; the janitor runs them again instead."""
        self.last_cleaned_at = now()

    def recover_intermediate(self) -> int:
        """At start: jobs a previous process on this queue pulled but never started go back."""
        moved = 0
        for queue in self.queues:
            while self.connection.lmove(queue.intermediate_queue_key, queue.key, "RIGHT", "LEFT") is not None:
                moved += 1
        if moved:
            log.warning("put %d job(s) left in flight by a previous worker back on the queue", moved)
        return moved


def _retried(job: Job) -> bool:
    return bool(job.meta.get("attempts", 0))


def _outcome_label(outcome: JobResult | JobError) -> str:
    if isinstance(outcome, JobResult):
        return "succeeded"
    return {CANCELED: "canceled", EXPIRED: "expired"}.get(outcome.code or "", "failed")
