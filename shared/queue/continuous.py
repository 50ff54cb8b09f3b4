"""The queue side of continuous batching: a feeder thread pulls, the step loop takes, rq's
bookkeeping is per job.

`Feeder` (one thread per worker, on a connection of its own) does every pull: a blocking BLMOVE
that returns the moment a job is pushed (its timeout, PULL_BLOCK_S, only bounds how long it goes
without looking at stop, suspension and its credit again), then whatever else is queued, up to
the credit the step loop last offered (free slots, bounded by the KV budget, less what already
waits). Pulled jobs go to a local deque; the step loop takes them at each step boundary without a
round trip and, when idle, waits on the deque's condition (woken by the feeder at once, never by
Redis's timer). So a decoding step makes no Redis round trip when nothing arrives.

A job is started when its row is admitted and finished when its row ends; a decoding step's
starts and finishes go to Redis in one pipeline (`JobFeed.record`), and `finish_commands` is the
same writer `finish_batch` uses. The started registry therefore holds exactly the running rows
(what routing's "least loaded" counts), and the janitor's crash recovery sees them as before.
Jobs pulled but not started yet wait in rq's intermediate list (the janitor and a restarted
worker put a dead worker's back on the queue). The feeder knows every id it holds: a pull whose
reply was lost (a connection error after Redis moved the id) is adopted back from that list, and
whatever it holds unstarted when the worker stops (drain, SIGTERM, a Redis reconnect) goes back
to the head of the queue. Once drain starts the feeder pulls nothing more; a pull that was
already blocked when it started returns its job to the queue at once.

A dead or hung connection cannot stop pulls for good: every blocking call is bounded (the worker
gives the feeder a client with a socket timeout), errors are logged and retried with backoff, and
`Feeder.stalled_s` (read by the worker's /livez) grows when the thread died or stopped coming
back from its calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.suspension import is_suspended
from rq.worker import WorkerStatus

from shared.contract import JobError, JobResult
from shared.queue.finish import StartedJob, finish_commands
from shared.queue.resume import requeue_own_started
from shared.queue.worker import HEARTBEAT_EVERY_S, RECONCILE_EVERY_S, QueueWorker, retried
from shared.redis_text import text, texts

log = logging.getLogger("omega.worker.feeder")
Outcome = JobResult | JobError
SUSPEND_CHECK_S = 0.2
# The longest one blocking pull waits (Redis answers at once when a job is pushed; this only
# bounds how stale the feeder's view of stop/suspension/credit can get while the queue is empty).
PULL_BLOCK_S = 1.0
BURST_PULL_BLOCK_S = 0.1  # burst mode (tests, tools): an empty queue ends the worker quickly
BACKOFF_MAX_S = 2.0
# What the worker's feeder client needs as its socket timeout: a blocking pull plus slack, so a
# connection to a vanished primary fails instead of blocking forever.
FEED_SOCKET_TIMEOUT_S = PULL_BLOCK_S + 4.0
# The longest a healthy feeder stays away from its loop: a call cut off by that socket timeout,
# then the longest backoff. Only time beyond it counts as stalled (the worker's /livez).
STALL_GRACE_S = FEED_SOCKET_TIMEOUT_S + BACKOFF_MAX_S


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


class Feeder:
    """Pulls jobs on a thread of its own, never more than the step loop offered to take."""

    def __init__(
        self,
        queue: Queue,
        connection: Redis,
        job_connection: Redis,
        serializer: Any,
        credit: int,
        stopping: Callable[[], bool],
        block_s: float = PULL_BLOCK_S,
    ) -> None:
        self.queue = queue
        self.conn = connection  # the pulls' own client (a blocking pull holds its connection)
        self.job_connection = job_connection  # what the jobs keep: the worker's client
        self.serializer = serializer
        self.stopping = stopping
        self.block_s = block_s
        self.cond = threading.Condition()
        self._ready: deque[QueuedJob] = deque()  # pulled, not taken by the step loop yet
        # Pulled and not started nor put back (so in the intermediate list): the job once handed
        # to the loop, None while its pull is under way.
        self._held: dict[str, QueuedJob | None] = {}
        self._credit = credit  # how many more jobs the step loop could admit soon
        self._closed = False
        self._in_flight = False
        self._suspended = False
        self._pulse = time.monotonic()
        self._lost_reply = False
        self.thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    # --- the step loop's side ------------------------------------------------------------------
    def start(self) -> Feeder:
        self.thread.start()
        return self

    def offer(self, credit: int) -> None:
        """The step loop could admit `credit` more jobs soon (free slots within the KV budget,
        less what it already holds unadmitted)."""
        with self.cond:
            if credit != self._credit:
                self._credit = max(0, credit)
                self.cond.notify_all()

    def take(self, timeout_s: float | None = 0.0, limit: int = 0) -> list[QueuedJob]:
        """The jobs pulled and not taken yet (at most `limit`, 0: all); waits up to `timeout_s`
        (None: forever) for one."""
        if not self._ready and timeout_s == 0.0:
            return []  # the common case at a step boundary: no lock, no wait
        with self.cond:
            if not self._ready and timeout_s != 0.0:
                self.cond.wait_for(lambda: bool(self._ready) or self._closed, timeout=timeout_s)
            count = min(limit, len(self._ready)) if limit else len(self._ready)
            taken = [self._ready.popleft() for _ in range(count)]
            self._credit = max(0, self._credit - len(taken))  # until the loop offers again
            return taken

    def settled_empty(self) -> bool:
        """Burst mode: nothing pulled waits here, no pull is in flight and nothing can be pulled
        (the queue is empty or pulls are suspended)."""
        with self.cond:
            self.cond.wait_for(lambda: not self._in_flight or self._closed, timeout=self.block_s * 5)
            if self._ready or self._lost_reply:
                return False
        return self._suspended or not self.conn.llen(self.queue.key)

    @property
    def suspended(self) -> bool:
        return self._suspended

    def forget(self, jobs: Sequence[QueuedJob]) -> None:
        """These jobs were started or put back: no longer in the intermediate list."""
        with self.cond:
            for q in jobs:
                self._held.pop(q.id, None)

    def put_back(self, jobs: Sequence[QueuedJob]) -> None:
        """Jobs pulled but never started go back to the head of the queue, in order."""
        if not jobs:
            return
        with self.conn.pipeline() as pipe:
            for q in reversed(jobs):
                pipe.lrem(self.queue.intermediate_queue_key, 1, q.id)
                pipe.lpush(self.queue.key, q.id)
            pipe.execute()
        self.forget(jobs)

    def close(self, join_s: float = PULL_BLOCK_S + 1.0) -> None:
        """No more pulls. Everything pulled and not started goes back to the head of the queue,
        in order: at this point (the worker's loop has ended) that is the whole intermediate
        list, including a job whose pull reply was lost. If Redis does not answer, the list
        keeps them and the next start puts them back (`recover_intermediate`)."""
        with self.cond:
            self._closed = True
            self.cond.notify_all()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(join_s)
        with self.cond:
            self._ready.clear()
            self._held.clear()
        queue, moved = self.queue, 0
        try:
            while self.conn.lmove(queue.intermediate_queue_key, queue.key, "RIGHT", "LEFT") is not None:
                moved += 1
        except Exception as exc:
            log.warning("could not put pulled jobs back (%s): the next start will", exc)
        if moved:
            log.warning("put %d pulled, unstarted job(s) back on the queue", moved)

    def stalled_s(self) -> float:
        """Seconds the thread has been away longer than a healthy one can be (a call bounded by
        the socket timeout, then a backoff): 0 while it keeps coming back; infinite if it died."""
        if self._closed or not self.thread.ident:
            return 0.0
        if not self.thread.is_alive():
            return float("inf")
        return max(0.0, time.monotonic() - self._pulse - STALL_GRACE_S)

    # --- the feeder thread -------------------------------------------------------------------------
    def _wanted(self) -> int:
        return self._credit - len(self._ready)

    def _may_pull(self) -> bool:
        return self._wanted() > 0 and not self.stopping()

    def _run(self) -> None:
        delay = 0.1
        while True:
            with self.cond:
                self._pulse = time.monotonic()
                self.cond.wait_for(lambda: self._closed or self._may_pull(), timeout=self.block_s)
                if self._closed:
                    return
                self._in_flight = self._may_pull()
                want = self._wanted()
            if not self._in_flight:
                continue  # woken by the timeout: come back (the pulse) and look again
            try:
                pulled = [] if self._check_suspended() else self._pull(want)
                if self._lost_reply:
                    pulled += self._adopt()
                delay = 0.1
            except Exception as exc:  # Redis away, a failover, anything: log, back off, retry
                self._lost_reply = True  # a move may have happened without its reply
                with self.cond:
                    self._in_flight = False
                    self._pulse = time.monotonic()
                log.warning("pulling jobs failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay)
                with self.cond:
                    self.cond.wait_for(lambda: self._closed, timeout=delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self._hand_over(pulled)

    def _hand_over(self, pulled: list[QueuedJob]) -> None:
        back: list[QueuedJob] = []
        with self.cond:
            self._in_flight = False
            self._pulse = time.monotonic()
            if self._closed or self.stopping():
                back = pulled  # drain started during the pull: the job is not ours to run
            else:
                self._ready.extend(pulled)
                if pulled:
                    self.cond.notify_all()
        if back:
            try:
                self.put_back(back)
            except Exception as exc:
                log.warning("could not put %d job(s) back (%s): close() will", len(back), exc)

    def _check_suspended(self) -> bool:
        """`rq suspend` holds pulls. Asked before every pull (on this thread, so no step waits
        for it): a pull blocked when the pause came takes at most that one job, as rq's own
        blocked dequeue does."""
        self._suspended = bool(is_suspended(self.conn))
        if self._suspended:
            with self.cond:
                self.cond.wait_for(lambda: self._closed, timeout=SUSPEND_CHECK_S)
        return self._suspended

    def _pull(self, want: int) -> list[QueuedJob]:
        """Up to `want` jobs: a blocking move for the first (returns as one is pushed), then in
        one round trip its hash and a move of each further one, then those further hashes."""
        queue, conn = self.queue, self.conn
        # Redis takes fractional seconds here; redis-py's stubs say int.
        first = conn.blmove(queue.key, queue.intermediate_queue_key, self.block_s, "LEFT", "RIGHT")  # type: ignore[arg-type]
        if first is None:
            return []
        first_id = text(first)
        self._hold_ids([first_id])  # held from here: a failure below leaves it adoptable, not lost
        with self.cond:  # the credit may have shrunk while the pull was blocked
            want = max(1, min(want, self._wanted()))
        with conn.pipeline(transaction=False) as pipe:
            pipe.hgetall(Job.key_for(first_id))
            for _ in range(want - 1):
                pipe.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")
            replies = pipe.execute()
        more = texts(raw for raw in replies[1:] if raw is not None)
        self._hold_ids(more)
        hashes = [replies[0]]
        if more:
            hashes += self._hashes(more)
        return self._jobs([first_id, *more], hashes)

    def _hashes(self, ids: list[str]) -> list[Any]:
        """The job hashes of `ids`, in one round trip."""
        with self.conn.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(Job.key_for(job_id))
            return list(pipe.execute())

    def _hold_ids(self, ids: list[str]) -> None:
        with self.cond:
            for job_id in ids:
                self._held.setdefault(job_id, None)

    def _jobs(self, ids: list[str], hashes: list[Any]) -> list[QueuedJob]:
        jobs: list[QueuedJob] = []
        gone: list[str] = []
        for job_id, raw in zip(ids, hashes, strict=True):
            if not raw:  # deleted or expired while queued
                gone.append(job_id)
                continue
            job = Job(job_id, connection=self.job_connection, serializer=self.serializer)
            job.restore(raw)
            queued = QueuedJob(job)
            jobs.append(queued)
            with self.cond:
                self._held[job_id] = queued
        if gone:
            with self.conn.pipeline(transaction=False) as pipe:
                for job_id in gone:
                    pipe.lrem(self.queue.intermediate_queue_key, 1, job_id)
                pipe.execute()
            with self.cond:
                for job_id in gone:
                    self._held.pop(job_id, None)
        return jobs

    def adopt_strays(self) -> None:
        """Have the feeder thread take, with its next pull, every id in the intermediate list that
        nothing here holds (a failover can leave pulls there whose finish was never replicated).
        On the feeder thread, after its own pull, so no pull of ours is in flight meanwhile."""
        with self.cond:
            self._lost_reply = True
            self.cond.notify_all()

    def _adopt(self) -> list[QueuedJob]:
        """After a failed pull: ids in this queue's intermediate list that nothing here holds
        were moved by a pull whose reply was lost. Only this worker pulls from its queue."""
        listed = texts(self.conn.lrange(self.queue.intermediate_queue_key, 0, -1))
        with self.cond:  # not held, or held only by a pull that failed before handing it over
            ids = list(dict.fromkeys(job_id for job_id in listed if self._held.get(job_id) is None))
        self._lost_reply = False
        if not ids:
            return []
        log.warning("adopting %d pulled job(s) whose pull reply was lost", len(ids))
        return self._jobs(ids, self._hashes(ids))


class JobFeed:
    """What a step loop sees of its queue during one unit of work."""

    def __init__(self, worker: ContinuousWorker, queue: Queue, first: QueuedJob, feeder: Feeder) -> None:
        self.worker = worker
        self.queue = queue
        self.first = first
        self.feeder = feeder
        self.batch_timeout_s = worker.batch_timeout_s

    def stopping(self) -> bool:
        """SIGTERM/SIGINT arrived: admit nothing more, finish the running rows."""
        return bool(self.worker._stop_requested)

    def offer(self, credit: int) -> None:
        """The loop could admit `credit` more jobs soon: the feeder pulls up to that."""
        self.feeder.offer(0 if self.stopping() else credit)

    def take(self, timeout_s: float | None = 0.0) -> list[QueuedJob]:
        """Jobs the feeder pulled since the last take (no round trip); waits up to `timeout_s`
        for one when none is there."""
        return self.feeder.take(timeout_s)

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
        if written:
            self.feeder.forget(todo)  # out of the intermediate list now
        ended = {id(q) for q, _ in done}
        with worker._running_lock:  # heartbeats cover exactly the started, unfinished jobs
            kept = [s for s in worker.running if s.id not in {q.id for q, _ in done}]
            worker.running = kept + [q.started for q in start if q.started is not None and id(q) not in ended]
        return written

    def put_back(self, jobs: Sequence[QueuedJob]) -> None:
        """Jobs pulled but never admitted go back to the head of the queue, in order."""
        self.feeder.put_back(jobs)

    def discard(self, copies: Sequence[QueuedJob]) -> None:
        """Pulled copies of jobs the loop already holds: one occurrence of each leaves the
        intermediate list (the held job's own start or put-back removes the other)."""
        if not copies:
            return
        with self.worker.connection.pipeline(transaction=False) as pipe:
            for q in copies:
                pipe.lrem(self.queue.intermediate_queue_key, 1, q.id)
            pipe.execute()


class StepLoop(Protocol):
    @property
    def max_credit(self) -> int:
        """What an idle loop offers the feeder (its slots)."""

    def serve(self, feed: JobFeed) -> None:
        """Run `feed.first` and whatever else it takes until nothing runs or waits; every job it
        took is recorded as ended or put back before it returns."""


class ContinuousWorker(QueueWorker):
    """A QueueWorker whose unit of work is a run of decoding steps of a `StepLoop`, fed by a
    `Feeder` thread instead of rq's own blocking pop."""

    def __init__(self, *args: Any, loop: StepLoop, feed_connection: Redis | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loop = loop
        self.feed_connection = feed_connection
        self.feeder: Feeder | None = None
        self._burst = False
        self._first: QueuedJob | None = None

    def work(self, burst: bool = False, *args: Any, **kwargs: Any) -> bool:
        self._burst = burst
        return bool(super().work(burst, *args, **kwargs))

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        if self.feeder is not None:
            self.feeder.close()
        self.feeder = Feeder(
            self.queues[0],
            self.feed_connection or self.connection,
            self.connection,
            self.serializer,
            credit=self.loop.max_credit,
            stopping=lambda: bool(self._stop_requested),
            block_s=BURST_PULL_BLOCK_S if self._burst else PULL_BLOCK_S,
        ).start()

    def teardown(self) -> None:
        if self.feeder is not None:
            self.feeder.close()
        super().teardown()

    def pull_stalled_s(self) -> float:
        """For /livez: how long the feeder has not come back (infinite if its thread died)."""
        feeder = self.feeder
        return feeder.stalled_s() if feeder is not None else 0.0

    def check_for_suspension(self, burst: bool) -> None:
        # The feeder asks Redis about suspension before its pulls; rq's own check (a round trip
        # before every unit of work) only runs while the feeder has seen pulls suspended.
        if self.feeder is None or self.feeder.suspended:
            super().check_for_suspension(burst)

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """rq's idle wait, on the feeder's deque: woken the moment the feeder hands a job over."""
        feeder = self.feeder
        assert feeder is not None, "bootstrap starts the feeder"
        self.set_state(WorkerStatus.IDLE)
        while True:
            self.heartbeat()
            if self._reconciled_at is None or time.monotonic() - self._reconciled_at >= RECONCILE_EVERY_S:
                self.reconcile_idle(feeder)
            taken = feeder.take(HEARTBEAT_EVERY_S, limit=1)  # the rest: the loop's first take
            if taken:
                self._first = taken[0]
                return taken[0].job, feeder.queue
            if feeder.stalled_s() == float("inf"):
                raise RuntimeError("the feeder thread died")  # rq's loop ends; serve() restarts it
            if self._burst and feeder.settled_empty():
                return None

    def reconcile_idle(self, feeder: Feeder) -> None:
        """`reconcile` for a worker whose feeder may hold pulled jobs: idle, nothing here is
        started, so every job started under this worker's name goes back to run again; pulled
        ids nothing holds are taken by the feeder itself (`adopt_strays`). After a failover these
        are the jobs whose start or pull the promoted replica got but not their finish."""
        requeue_own_started(self)
        feeder.adopt_strays()
        self._reconciled_at = time.monotonic()

    def execute_job(self, job: Job, queue: Queue) -> None:
        # Busy from here: a SIGTERM now means "finish the running rows", not "stop at once".
        self.set_state(WorkerStatus.BUSY)
        first, self._first = self._first, None
        assert first is not None
        assert first.job is job
        feeder = self.feeder
        assert feeder is not None
        try:
            self.loop.serve(JobFeed(self, queue, first, feeder))
        finally:
            with self._running_lock:
                self.running = []
            self.set_state(WorkerStatus.IDLE)
