"""The queue side of continuous batching: jobs pulled at step boundaries, rq's bookkeeping per job.

A job is started when its row is admitted and finished when its row ends; a decoding step's
starts and finishes go to Redis in one pipeline (`JobFeed.record`), and `finish_commands` is the
same writer `finish_batch` uses. The started registry therefore holds exactly the running rows
(what routing's "least loaded" counts), and the janitor's crash recovery sees them as before;
jobs pulled but not admitted yet wait in rq's intermediate list, which the janitor and a restarted
worker put back on the queue.

rq's own loop still does the idle wait (a blocking pop that returns the moment a job arrives);
`ContinuousWorker.execute_job` then hands that job to a `StepLoop` (workers/continuous/serving.py),
which keeps control while anything runs or waits, pulling more with non-blocking LMOVEs whenever
slots are free.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.job import Job
from rq.queue import Queue
from rq.suspension import is_suspended
from rq.worker import WorkerStatus

from shared.contract import JobError, JobResult
from shared.queue.finish import StartedJob, finish_commands
from shared.queue.worker import QueueWorker, retried

log = logging.getLogger("omega.worker.rq")
Outcome = JobResult | JobError
SUSPEND_CHECK_S = 0.2


@dataclass(eq=False)
class QueuedJob:
    """A job this worker pulled; `started` once rq's bookkeeping started it."""

    job: Job
    started: StartedJob | None = None

    @property
    def id(self) -> str:
        return str(self.job.id)

    @property
    def payload(self) -> bytes:
        data: bytes = self.job.args[0]
        return data

    @property
    def enqueued_at(self) -> float:
        stamp = self.job.enqueued_at
        return stamp.timestamp() if stamp is not None else time.time()

    @property
    def retried(self) -> bool:
        """Running when a worker died before: it must run alone (it may be what killed it)."""
        return retried(self.job)


class JobFeed:
    """What a step loop sees of its queue during one unit of work."""

    def __init__(self, worker: ContinuousWorker, queue: Queue, first: QueuedJob) -> None:
        self.worker = worker
        self.queue = queue
        self.first = first
        self.batch_timeout_s = worker.batch_timeout_s
        self._suspended_at = 0.0
        self._suspended = False

    def suspended(self) -> bool:
        """`rq suspend` holds pulls, as rq's own loop does between jobs; asked at most every
        SUSPEND_CHECK_S, not on every decoding step (each ask is a round trip)."""
        now = time.monotonic()
        if now - self._suspended_at >= SUSPEND_CHECK_S:
            self._suspended_at = now
            # Redis away (a failover): as before; the running rows decode on meanwhile.
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
                self._suspended = bool(is_suspended(self.worker.connection))
        return self._suspended

    def stopping(self) -> bool:
        """SIGTERM/SIGINT arrived: admit nothing more, finish the running rows."""
        return bool(self.worker._stop_requested)

    def pull(self, count: int, window_s: float = 0.0) -> list[QueuedJob]:
        """Up to `count` waiting jobs: what is queued now (one round trip), then, within
        `window_s`, what arrives."""
        if count <= 0 or self.suspended():
            return []
        queue = self.queue
        pulled: list[Job] = []
        try:
            with self.worker.connection.pipeline(transaction=False) as pipe:
                for _ in range(count):
                    pipe.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")
                pulled = self.worker._fetch_pulled(queue, pipe.execute())
            deadline = time.monotonic() + window_s
            while len(pulled) < count and not self.stopping():
                left = deadline - time.monotonic()
                job = self.worker._pull_one(queue, left) if left > 0.001 else None
                if job is None:
                    break
                pulled.append(job)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # Redis away (a failover): the rows in hand decode on and their outcomes wait for it
            # (`record`); a pull whose reply was lost left its jobs in the intermediate list, which
            # the worker puts back when it is idle (QueueWorker.reconcile). Never fail held jobs.
            log.warning("could not pull more jobs (%s); carrying on with %d pulled", exc, len(pulled))
        return [QueuedJob(job) for job in pulled]

    def record(self, start: Sequence[QueuedJob], done: Sequence[tuple[QueuedJob, Outcome]]) -> bool:
        """One step's bookkeeping in one round trip: `start` are admitted, `done` ended (a job
        that ends unstarted, e.g. canceled while waiting, is started and finished in it).
        Waits out a Redis outage; False if the outcomes could not be written."""
        worker = self.worker
        todo = list({id(q): q for q in [*start, *(q for q, _ in done)] if q.started is None}.values())

        def write() -> None:
            with worker.connection.pipeline() as pipe:
                fresh = worker._start_commands([q.job for q in todo], self.queue, pipe) if todo else []
                started = {id(q): s for q, s in zip(todo, fresh, strict=True)}
                finish_commands(pipe, worker, [(q.started or started[id(q)], outcome) for q, outcome in done])
                pipe.execute()
            for q in todo:
                q.started = started[id(q)]

        ids = ", ".join(q.id for q in [*todo, *(q for q, _ in done)])
        written = worker._patiently(write, ids)
        ended = {id(q) for q, _ in done}
        with worker._running_lock:  # heartbeats cover exactly the started, unfinished jobs
            kept = [s for s in worker.running if s.id not in {q.id for q, _ in done}]
            worker.running = kept + [q.started for q in start if q.started is not None and id(q) not in ended]
        return written

    def put_back(self, jobs: Sequence[QueuedJob]) -> None:
        """Jobs pulled but never admitted go back to the head of the queue, in order."""
        if not jobs:
            return
        try:
            with self.worker.connection.pipeline() as pipe:
                for q in reversed(jobs):
                    pipe.lrem(self.queue.intermediate_queue_key, 1, q.id)
                    pipe.lpush(self.queue.key, q.id)
                pipe.execute()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # Still in the intermediate list: put back when this worker, or its successor, resumes.
            log.warning("could not put %d job(s) back on the queue now (%s)", len(jobs), exc)


class StepLoop(Protocol):
    def serve(self, feed: JobFeed) -> None:
        """Run `feed.first` and whatever else it pulls until nothing runs or waits; every job it
        pulled is recorded as ended or put back before it returns."""


class ContinuousWorker(QueueWorker):
    """A QueueWorker whose unit of work is a run of decoding steps of a `StepLoop`."""

    def __init__(self, *args: Any, loop: StepLoop, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loop = loop

    def execute_job(self, job: Job, queue: Queue) -> None:
        # Busy from here: a SIGTERM now means "finish the running rows", not "stop at once".
        self.set_state(WorkerStatus.BUSY)
        try:
            self.loop.serve(JobFeed(self, queue, QueuedJob(job)))
        finally:
            with self._running_lock:
                self.running = []
            self.set_state(WorkerStatus.IDLE)
