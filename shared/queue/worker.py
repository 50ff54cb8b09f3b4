"""An rq worker whose unit of work is a micro-batch, in-process (no fork: the model stays resident).

rq's loop dequeues the first job (atomically moved to the queue's intermediate list, since a
worker listens on exactly one queue). `execute_job` then pulls up to MAX_BATCH_SIZE-1 more with
the same atomic move, waiting at most BATCH_TIMEOUT_MS, gives every job the bookkeeping rq gives
one (execution record, started registry, heartbeats), hands the micro-batch to a
`MicroBatchHandler` (workers/ runs the model there) and ends every job with `finish_batch`, so
each lands in rq's finished or failed registry and its result on the stream the API blocks on.

Between units of work the worker holds nothing, so its wait for the next job also puts back what its
queue still shows in flight (`reconcile`): a Redis failover or a lost reply can leave jobs pulled or
started under this worker's name that it no longer has in hand, and nothing else would run them.

rq does its bookkeeping one job at a time in several round trips each (its success path alone
WATCHes for dependents, which our jobs never have); per micro-batch that cost as much as
generating, so here the start and the finish of a whole micro-batch are one pipeline each.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.utils import now
from rq.worker import SimpleWorker, WorkerStatus

from shared.contract import JobError, JobResult
from shared.queue import jobs
from shared.queue.finish import StartedJob, finish_batch
from shared.queue.resume import requeue_own_started
from shared.redis_text import text, texts
from shared.serializer import MsgpackSerializer

log = logging.getLogger("omega.worker.rq")
HEARTBEAT_EVERY_S = 1.0
# How long a finished job's outcome is held while Redis is unreachable.
RECORD_PATIENCE_S = 600.0
# The idle wait's blocking pull: bounded, so the wait checks its queue (`reconcile`) at least this
# often, and far below the worker connections' socket timeout (workers/main.py), so a reply that
# never comes ends as a timeout instead of a wait forever.
DEQUEUE_WAIT_S = 5
RECONCILE_EVERY_S = 5.0

Outcome = JobResult | JobError


@dataclass(frozen=True)
class MicroBatch:
    """What a handler runs: started jobs in queue order, and a look at what waits next."""

    jobs: list[StartedJob]
    # A full pull: more jobs are probably waiting (worth preparing their rows meanwhile).
    more_waiting: bool
    peek_waiting: Callable[[], list[bytes]]  # payloads of the jobs waiting next (a read only)


def payload_bytes(started: StartedJob) -> bytes:
    """The job's msgpack `JobPayload`, as the API stored it."""
    data: bytes = started.job.args[0]
    return data


def enqueued_at(started: StartedJob) -> float:
    """Unix time the job entered its worker queue."""
    stamp = started.job.enqueued_at
    return stamp.timestamp() if stamp is not None else time.time()


class MicroBatchHandler(Protocol):
    def run(self, batch: MicroBatch) -> list[Outcome]:
        """One outcome per job, in order; must not raise for a single job's failure."""

    def failed(self, exc: Exception, job_id: str) -> JobError:
        """The error a job gets when its whole micro-batch failed unexpectedly."""

    def recorded(self, outcomes: list[Outcome], written: bool) -> None:
        """After the outcomes were written to Redis (`written`), or given up on."""


def retried(job: Job) -> bool:
    """A job that was running when its worker died (the janitor put it back)."""
    return bool(job.meta.get(jobs.ATTEMPTS, 0))


class QueueWorker(SimpleWorker):
    """SimpleWorker on one queue, in-process, with rq's per-job bookkeeping done in pipelines;
    subclasses decide what a unit of work is (a micro-batch, or continuous decoding steps)."""

    # Reconnect quickly after a Redis outage instead of rq's default 60 s ceiling.
    max_connection_wait_time = 2.0

    def __init__(self, *args: Any, max_batch_size: int, batch_timeout_ms: float, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", MsgpackSerializer)
        super().__init__(*args, **kwargs)
        self.max_batch_size = max_batch_size
        self.batch_timeout_s = batch_timeout_ms / 1000.0
        self.running: list[StartedJob] = []
        self._running_lock = threading.Lock()
        self.shutdown_requested = False
        self._beat_at = 0.0
        self._reconciled_at: float | None = None  # None: due before the next pull
        # Told True as each turn of the wait for a job begins and False as it ends (/livez).
        self.on_wait: Callable[[bool], None] | None = None
        # Called once, at the first stop request (the worker process bounds its own drain with it).
        self.on_stop_requested: Callable[[], None] | None = None

    def request_stop(self, signum: Any, frame: Any) -> None:
        """SIGTERM/SIGINT: stop pulling, finish the micro-batch in hand, then leave (rq's warm shutdown)."""
        if not self.shutdown_requested and self.on_stop_requested is not None:
            self.on_stop_requested()
        self.shutdown_requested = True
        super().request_stop(signum, frame)

    # --- waiting for the next job --------------------------------------------------------------
    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """rq's wait for the next job, in turns of at most DEQUEUE_WAIT_S: a heartbeat, a
        `reconcile` (after a connection error, else every RECONCILE_EVERY_S), one blocking pull.

        rq's own wait retries a lost connection within itself and then pulls from whichever primary
        the sentinels name, so its caller never learnt that a failover happened; jobs the old
        primary's last moments left pulled or started under this worker's name (their finish not
        replicated, or a reply lost with the connection) then waited forever."""
        self.set_state(WorkerStatus.IDLE)
        idle_since = time.monotonic()
        retry_s = 1.0
        while True:
            try:
                result = self._wait_turn(None if timeout is None else max(1, min(timeout, DEQUEUE_WAIT_S)))
                if result is not None or timeout is None:
                    break
            except DequeueTimeout:
                retry_s = 1.0
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self._reconciled_at = None
                log.warning("Redis unreachable while waiting for jobs (%s); retrying in %.0f s", exc, retry_s)
                time.sleep(retry_s)
                retry_s = min(retry_s * 2, self.max_connection_wait_time)
            if max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time:
                return None
        if result is not None:
            result[0].redis_server_version = self.get_redis_server_version()
        self.heartbeat()
        return result

    def _wait_turn(self, wait: int | None) -> tuple[Job, Queue] | None:
        """One turn of the wait; every round trip in it is bounded (socket timeout), so `on_wait`
        hears of its end however it ends."""
        if self.on_wait is not None:
            self.on_wait(True)
        try:
            self.heartbeat()
            if self.should_run_maintenance_tasks:
                self.run_maintenance_tasks()
            if self._reconciled_at is None or time.monotonic() - self._reconciled_at >= RECONCILE_EVERY_S:
                self.reconcile()
            result: tuple[Job, Queue] | None = self.queue_class.dequeue_any(
                self._ordered_queues,
                wait,
                connection=self.connection,
                job_class=self.job_class,
                serializer=self.serializer,
                death_penalty_class=self.death_penalty_class,
            )
            return result
        finally:
            if self.on_wait is not None:
                self.on_wait(False)

    def reconcile(self) -> int:
        """Only between units of work (nothing in hand): every job this worker's queue shows as
        pulled (intermediate list) or started under its name goes back to the front of the queue
        to run again. After a failover those are jobs whose pull or start the promoted replica got
        but whose finish it did not; returns how many."""
        moved = self.recover_intermediate() + requeue_own_started(self)
        self._reconciled_at = time.monotonic()
        return moved

    # --- pulling a micro-batch -------------------------------------------------------------
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
            job = jobs.fetch(conn, text(raw))
            if job is not None:
                return job
            conn.lrem(intermediate, 1, text(raw))  # deleted or expired while queued: look again

    def _fetch_pulled(self, queue: Queue, raw_ids: list[Any]) -> list[Job]:
        ids = texts(raw for raw in raw_ids if raw is not None)
        if not ids:
            return []
        fetched = Job.fetch_many(ids, connection=self.connection, serializer=self.serializer)
        for job_id, job in zip(ids, fetched, strict=True):
            if job is None:  # deleted or expired while queued
                self.connection.lrem(queue.intermediate_queue_key, 1, job_id)
        return [job for job in fetched if job is not None]

    # --- starting: rq's per-job steps, for the whole micro-batch in one round trip -----------
    def _start_commands(self, batch: list[Job], queue: Queue, pipe: Any) -> list[StartedJob]:
        """rq's prepare_execution + prepare_job_execution, queued on `pipe`: execution records,
        started registry, job status and heartbeat, out of the intermediate list."""
        ttl = max(self.get_heartbeat_ttl(job) for job in batch)
        started = []
        for job in batch:
            execution = Execution.create(job, ttl, pipeline=pipe, worker_name=self.name)
            self.executions[execution.id] = execution
            job.heartbeat(now(), ttl, pipeline=pipe)
            job.prepare_for_execution(self.name, pipeline=pipe)
            pipe.persist(job.key)
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            started.append(StartedJob(job, execution))
        self.set_state(WorkerStatus.BUSY, pipeline=pipe)
        self.heartbeat(ttl, pipeline=pipe)
        return started

    def _start_all(self, batch: list[Job], queue: Queue, started: dict[str, StartedJob]) -> list[StartedJob]:
        """Start the jobs not started yet, in one round trip; all of them, in order."""
        todo = [job for job in batch if job.id not in started]
        if todo:
            with self.connection.pipeline() as pipe:
                fresh = self._start_commands(todo, queue, pipe)
                pipe.execute()
            started = {**started, **{item.id: item for item in fresh}}
        return [started[job.id] for job in batch]

    def maintain_running_heartbeats(self) -> None:
        """Called from the heartbeat thread: keeps long generations out of rq's abandoned-job
        cleanup."""
        with self._running_lock:
            running = list(self.running)
        for item in running:
            try:
                self.maintain_heartbeats(item.job, item.execution)
            except Exception:  # a heartbeat must never kill the worker
                log.debug("heartbeat for job %s failed", item.id, exc_info=True)

    def peek_waiting(self, queue: Queue) -> list[bytes]:
        """Payloads of the next MAX_BATCH_SIZE jobs waiting on the queue, without taking them."""
        ids = texts(self.connection.lrange(queue.key, 0, self.max_batch_size - 1))
        fetched = Job.fetch_many(ids, connection=self.connection, serializer=self.serializer)
        return [job.args[0] for job in fetched if job is not None]

    def _patiently(self, step: Callable[[], None], job_id: str) -> bool:
        """Write a micro-batch's outcomes, waiting out a Redis outage: they are only in memory."""
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
        """Jobs pulled from this queue but never started (by this worker before an interruption, or
        by a previous process on the queue) go back; only while this worker holds nothing."""
        moved = 0
        for queue in self.queues:
            while self.connection.lmove(queue.intermediate_queue_key, queue.key, "RIGHT", "LEFT") is not None:
                moved += 1
        if moved:
            log.warning("put %d job(s) pulled but never started back on the queue", moved)
        return moved

    def restart_record(self) -> None:
        """Delete this worker's rq record: a crashed predecessor's record blocks rq's start."""
        self.connection.delete(self.key)


class MicroBatchWorker(QueueWorker):
    """A QueueWorker whose unit of work is a micro-batch of jobs, run by a `MicroBatchHandler`."""

    def __init__(self, *args: Any, handler: MicroBatchHandler, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handler = handler

    def _collect(self, first: Job, queue: Queue) -> tuple[list[Job], dict[str, StartedJob], bool]:
        """The micro-batch: `first`, what is already waiting, and what arrives within
        BATCH_TIMEOUT_MS. Returns the jobs, those already started (`first`: its start rides
        along with the pull of the waiting jobs, one round trip for both), and whether the pull
        came back full."""
        wanted = self.max_batch_size - 1
        with self.connection.pipeline() as pipe:
            started = self._start_commands([first], queue, pipe)
            for _ in range(wanted):
                pipe.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")
            replies = pipe.execute()
        waiting = self._fetch_pulled(queue, replies[len(replies) - wanted :] if wanted else [])
        full = wanted > 0 and len(waiting) == wanted
        collected = [first, *waiting]
        deadline = time.monotonic() + self.batch_timeout_s
        # Take what is already waiting at once; wait for more only within the window.
        while len(collected) < self.max_batch_size and not self._stop_requested:
            left = deadline - time.monotonic()
            job = self._pull_one(queue, left) if left > 0.001 else None
            if job is None:
                break
            collected.append(job)
        return collected, {item.id: item for item in started}, full

    # --- rq's unit of work -----------------------------------------------------------------
    def execute_job(self, job: Job, queue: Queue) -> None:
        # Busy from here: a SIGTERM now means "finish this micro-batch", not "stop at once".
        self.set_state(WorkerStatus.BUSY)
        collected, started, full = ([job], {}, False) if retried(job) else self._collect(job, queue)
        # A job that was running when a worker died runs alone: if it is what killed the
        # worker, it must not take a new set of batch-mates down with it.
        normal = [j for j in collected if not retried(j)]
        groups = ([normal] if normal else []) + [[j] for j in collected if retried(j)]
        try:
            for group in groups:
                self._run_group(group, queue, started, full)
        finally:
            self.set_state(WorkerStatus.IDLE)

    def _run_group(self, group: list[Job], queue: Queue, already: dict[str, StartedJob], full: bool) -> None:
        started = self._start_all(group, queue, already)
        with self._running_lock:  # until recorded: heartbeats cover them
            self.running = started
        try:
            batch = MicroBatch(started, full, lambda: self.peek_waiting(queue))
            try:
                outcomes = self.handler.run(batch)
            except Exception as exc:  # the handler isolates failures; this is a last line of defence
                outcomes = [self.handler.failed(exc, item.id) for item in started]
            done = list(zip(started, outcomes, strict=True))
            written = self._patiently(lambda: finish_batch(self, done), ", ".join(item.id for item in started))
            self.handler.recorded(outcomes, written)
        finally:
            with self._running_lock:
                self.running = []
