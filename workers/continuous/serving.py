"""The continuous worker's loop: pull, prepare, admit, decode and record, once per decoding step.

Each iteration is one step boundary:
1. jobs whose rows are prepared are submitted (a job that was running when a worker died, i.e.
   with attempts > 0, only into an empty engine, and nothing joins it: poison isolation);
2. one engine step: ended rows retire, waiting rows are admitted (prefill), every row decodes;
3. the step's rq bookkeeping in one round trip: admitted jobs start, ended rows finish;
4. the loop offers the feeder thread (shared/queue/continuous.py `Feeder`) as many jobs as it
   could admit soon (free slots within the KV budget, less what it holds unadmitted) and takes
   what the feeder pulled meanwhile from a local deque: no Redis round trip per step; jobs with
   images are read and prepared on a thread of their own while the running rows decode
   (text-only ones at once).
When nothing runs or waits it returns, and the worker waits on the feeder's deque for the next
job (woken as the feeder's blocking pull returns: no batch window, no timer-resolution wait).
Cancel requests are polled every 50 ms (CancelWatch) for every job this loop holds; the engine
checks the flags at every step.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image
from redis import Redis

from shared.contract import (
    JobError,
    JobPayload,
    TextPart,
    canceled_error,
    decode_payload,
    expired_error,
    outcome_status,
)
from shared.errors import ServiceError
from shared.queue.continuous import ContinuousWorker, JobFeed, Outcome, QueuedJob
from workers import metrics
from workers.batch import PreparedRow
from workers.cancel_watch import CancelWatch
from workers.continuous.scheduler import ContinuousEngine, Limits, RowStepError
from workers.engine import Engine, RowOutput, Tools
from workers.images import ImageLoader
from workers.runner import job_error, row_result

log = logging.getLogger("omega.worker.continuous")


@dataclass(frozen=True)
class Load:
    """What the fleet record and /health show of a continuous worker."""

    running: int
    free_slots: int
    kv_tokens: int


@dataclass(eq=False)
class Entry:
    """A job this loop holds, from its pull until its outcome is recorded."""

    queued: QueuedJob
    payload: JobPayload | None = None
    future: Future[PreparedRow] | None = None
    row: PreparedRow | None = None
    canceled: bool = False
    admitted_at: float = 0.0  # unix time: queue time runs up to here
    admitted_perf: float = 0.0
    group: str = ""  # rows prefilled together share it (the result's batch_id)
    group_size: int = 1

    @property
    def id(self) -> str:
        return self.queued.id


class StepServer:
    """Runs a `ContinuousEngine` for a `ContinuousWorker` (a `shared.queue.continuous.StepLoop`)."""

    def __init__(
        self,
        engine: Engine,
        images: ImageLoader,
        redis: Redis,
        worker_name: str,
        limits: Limits | None = None,
        on_load: Callable[[Load], None] | None = None,
        on_row: Callable[[float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.images = images
        self.worker_name = worker_name
        self.on_load = on_load
        self.on_row = on_row  # a finished row's generation seconds (the fleet's wait estimates)
        self.ce = ContinuousEngine(engine, self._done, self._failed, limits, on_admitted=self._admitted)
        self.cancels = CancelWatch(redis, self._cancel)
        self._lock = threading.Lock()  # entries' cancel flags: the cancel watch sets them
        self._entries: dict[str, Entry] = {}  # pulled, outcome not recorded yet
        self._pending: list[Entry] = []  # pulled, not submitted to the engine yet
        self._start: list[Entry] = []
        self._ended: list[tuple[Entry, Outcome]] = []
        self._solo: Entry | None = None  # a retried job running alone
        self._prep = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
        self._tools: Tools | None = None
        self._watched: list[str] = []
        self._load: Load | None = None

    @property
    def max_credit(self) -> int:
        """What an idle loop offers the feeder: every slot."""
        return self.ce.limits.max_rows

    # --- the loop ---------------------------------------------------------------------------
    def serve(self, feed: JobFeed) -> None:
        first = [feed.first, *feed.take()]
        # BATCH_TIMEOUT_MS: an idle worker waits that long for company before its first prefill
        # (on the local deque: the wait is what was asked, not Redis's timer resolution).
        deadline = time.monotonic() + feed.batch_timeout_s
        while len(first) < self.max_credit and not feed.stopping():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            first += feed.take(left)
        self._take(first, feed)
        self.ce.admitting = True
        try:
            self._loop(feed)
        except Exception as exc:  # a last line of defence: no job is left without an outcome
            log.exception("the continuous loop failed; failing the jobs it held")
            self.ce.batch, self._pending, self._solo = None, [], None
            self.ce.waiting.clear()
            for entry in list(self._entries.values()):
                self._end(entry, job_error(exc, entry.id))
            self._record(feed)
        finally:
            self._watch()
            self._publish_load()
            feed.offer(self.max_credit)  # idle again: the feeder may fill every slot

    def _loop(self, feed: JobFeed) -> None:
        while True:
            stopping = feed.stopping()
            if stopping:
                self.ce.admitting = False
            else:
                self._submit_ready(wait=self.ce.batch is None and not self.ce.waiting)
            if not self.ce.idle:
                began = time.perf_counter()
                try:
                    self.ce.run_step()  # isolates a failing decoding step's rows itself
                except Exception as exc:
                    # Outside a decoding step (retiring, merging): the running rows cannot go on.
                    log.error("a scheduling step failed (%s): failing its %d row(s)", exc, self.ce.running)
                    self.ce.fail_running(exc)
                metrics.GENERATE_SECONDS.observe(time.perf_counter() - began)
            self._record(feed)
            if stopping:
                if self.ce.batch is None:
                    self._put_back(feed)
                    return
                continue
            if self.ce.idle and not self._pending:
                return
            feed.offer(self._credit())
            taken = feed.take()
            if taken:
                self._take(taken, feed)

    def _credit(self) -> int:
        """How many more jobs could be admitted soon: free slots within the KV budget (with
        rows running, n more rows need (running + n) x longest <= MAX_BATCH_TOKENS), less the
        jobs already held unadmitted; none while a retried job runs alone."""
        if self._solo is not None:
            return 0
        ce = self.ce
        held = len(ce.waiting) + len(self._pending)
        credit = ce.free_slots - held
        budget = ce.limits.max_kv_tokens
        if budget and ce.batch is not None:
            longest = max(live.kv_worst for live in ce.batch.rows)
            credit = min(credit, budget // max(1, longest) - ce.running - held)
        return max(0, credit)

    # --- taking and preparing jobs -------------------------------------------------------------
    def _take(self, pulled: Sequence[QueuedJob], feed: JobFeed) -> None:
        copies: list[QueuedJob] = []
        for queued in pulled:
            if queued.id in self._entries:
                # A recovery path put a job this loop holds back on the queue (the janitor's
                # requeue of a worker whose heartbeat lapsed on a starved machine, an adoption
                # after a lost pull reply): one job is one row, so the copy is dropped.
                log.warning("job %s was pulled again while this worker holds it: the copy is dropped", queued.id)
                copies.append(queued)
                continue
            entry = Entry(queued)
            self._entries[queued.id] = entry
            try:
                entry.payload = decode_payload(queued.payload)
            except Exception as exc:  # a job this worker cannot even read fails alone
                self._end(entry, job_error(exc, queued.id))
                continue
            if entry.payload.expires_at is not None and time.time() > entry.payload.expires_at:
                self._end(entry, expired_error(queued.id))
                continue
            if entry.payload.image_blobs:
                self.images.prefetch(entry.payload.image_blobs)  # the loader's threads start now
                entry.future = self._prep.submit(self._prepare, entry.payload)
            else:
                # Text only: tokenising costs less than a thread hop, and the row can join at the
                # very next step boundary instead of the one after.
                entry.future = Future()
                try:
                    entry.future.set_result(self.engine.prepare(entry.payload, []))
                except Exception as exc:
                    entry.future.set_exception(exc)
            self._pending.append(entry)
        feed.discard(copies)
        self._watch()

    def _prepare(self, payload: JobPayload) -> PreparedRow:
        """On the preparation thread, with a processor and tokenizer of its own."""
        loaded = self.images.load_many(payload.image_blobs)
        images: list[Image.Image] = []
        for digest in payload.image_blobs:
            image = loaded[digest]
            if isinstance(image, ServiceError):
                raise image
            images.append(image)
        if self._tools is None:
            self._tools = self.engine.private_tools()
        return self.engine.prepare(payload, images, self._tools)

    def _submit_ready(self, wait: bool) -> None:
        """Submit prepared rows, in pull order where they are ready. With `wait` (nothing is
        decoding) wait for every pulled row: what arrived together prefills together."""
        if self._solo is not None:
            if self._solo.id in self._entries:
                return  # nothing joins a retried job
            self._solo = None
        keep: list[Entry] = []
        blocked = False
        for entry in self._pending:
            assert entry.future is not None
            if blocked or not (entry.future.done() or wait):
                keep.append(entry)
                continue
            try:
                row = entry.future.result()  # waits only with `wait`
            except Exception as exc:  # a bad image or an invalid prompt: this job fails alone
                self._end(entry, job_error(exc, entry.id))
                continue
            if entry.queued.retried and (self.ce.batch is not None or self.ce.waiting):
                blocked = True  # it waits for an empty engine, and so does everything after it
                keep.append(entry)
                continue
            with self._lock:
                entry.row = row
                row.plan.cancel_requested = entry.canceled  # canceled while waiting: retired at once
            self.ce.submit(row)
            if entry.queued.retried:
                self._solo = entry
                blocked = True
        self._pending = keep

    # --- engine callbacks -------------------------------------------------------------------------
    def _admitted(self, rows: list[PreparedRow]) -> None:
        now, perf, group = time.time(), time.perf_counter(), uuid.uuid4().hex[:12]
        for row in rows:
            entry = self._entries[row.job.id]
            if entry.admitted_at:
                continue  # admitted again after the batch shrank (out of memory): started already
            entry.admitted_at, entry.admitted_perf = now, perf
            entry.group, entry.group_size = group, len(rows)
            self._start.append(entry)
        metrics.BATCH_SIZE.observe(len(rows))
        metrics.IMAGES.inc(sum(len(row.job.image_blobs) for row in rows))
        self.engine.stall_if_asked(rows)  # testing only (FAULT_STALL_MARKER): the /livez probe's check

    def _done(self, row: PreparedRow, output: RowOutput) -> None:
        entry = self._entries[row.job.id]
        plan = row.plan
        if plan.cancel_step is not None:
            self._end(entry, canceled_error(entry.id, running=plan.cancel_step > 0))
            return
        seconds = time.perf_counter() - entry.admitted_perf
        if self.on_row is not None:
            self.on_row(seconds)
        result = row_result(
            output,
            queue_seconds=entry.admitted_at - entry.queued.enqueued_at,
            generation_seconds=seconds,
            micro_batch=(entry.group, entry.group_size),
            worker=self.worker_name,
        )
        self._end(entry, result)

    def _failed(self, row: PreparedRow, exc: Exception) -> None:
        if isinstance(exc, RowStepError):  # isolated by bisection: say so, the cause goes to the log
            log.error("job %s failed", row.job.id, exc_info=exc)
            error = JobError(
                status=500,
                type="server_error",
                message=f"generation failed (job {row.job.id}): the model raised on this request's decoding "
                "step alone; the requests decoding beside it went on",
                code="generation_failed",
            )
            self._end(self._entries[row.job.id], error)
            return
        self._end(self._entries[row.job.id], job_error(exc, row.job.id))

    def _end(self, entry: Entry, outcome: Outcome) -> None:
        self._entries.pop(entry.id, None)
        self._ended.append((entry, outcome))

    # --- bookkeeping ------------------------------------------------------------------------------
    def _record(self, feed: JobFeed) -> None:
        if self._start or self._ended:
            start, ended = self._start, self._ended
            self._start, self._ended = [], []
            written = feed.record([e.queued for e in start], [(e.queued, outcome) for e, outcome in ended])
            if written:
                for _, outcome in ended:
                    metrics.JOBS.labels(outcome_status(outcome)).inc()
            self._crash_if_asked(start)
            self._watch()
        self._publish_load()

    def _put_back(self, feed: JobFeed) -> None:
        """Draining: jobs pulled but never admitted go back to the queue for another worker."""
        waiting = {row.job.id for row in self.ce.waiting}
        back = [e for e in self._entries.values() if e.id in waiting or e in self._pending]
        self.ce.waiting.clear()
        self._pending = []
        for entry in back:
            self._entries.pop(entry.id, None)
        feed.put_back([*(e.queued for e in back), *feed.take()])
        if back:
            log.warning("draining: put %d waiting job(s) back on the queue", len(back))

    def _publish_load(self) -> None:
        load = Load(self.ce.running, self.ce.free_slots, self.ce.kv_tokens)
        if load == self._load:
            return
        self._load = load
        metrics.RUNNING_ROWS.set(load.running)
        metrics.FREE_SLOTS.set(load.free_slots)
        metrics.KV_TOKENS.set(load.kv_tokens)
        if self.on_load is not None:
            self.on_load(load)

    # --- cancellation (the cancel watch's thread) -------------------------------------------------
    def _watch(self) -> None:
        ids = list(self._entries)
        if ids != self._watched:
            self._watched = ids
            self.cancels.watch(ids)

    def _cancel(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                entry = self._entries.get(job_id)
                if entry is None:
                    continue
                entry.canceled = True
                if entry.row is not None:
                    entry.row.plan.cancel_requested = True

    def _crash_if_asked(self, started: Sequence[Entry]) -> None:
        """Testing only (FAULT_KILL_MARKER): die the way a poison request kills a worker, once
        its job is recorded as running."""
        marker = self.engine.settings.fault_kill_marker
        if not marker:
            return
        payloads = [e.payload for e in started if e.payload is not None]
        texts = (p.text for job in payloads for m in job.messages for p in m.content if isinstance(p, TextPart))
        if any(marker in t for t in texts):
            log.error("FAULT_KILL_MARKER found in a job: killing this worker (fault-injection test)")
            os.kill(os.getpid(), signal.SIGKILL)


def continuous_worker(
    queues: list[str],
    *,
    connection: Redis,
    server: StepServer,
    max_batch_size: int,
    batch_timeout_ms: float,
    feed_connection: Redis | None = None,
    **rq_options: object,
) -> ContinuousWorker:
    """A queue worker that runs `server`'s continuous engine; its feeder thread pulls on
    `feed_connection` (a client with a socket timeout: see FEED_SOCKET_TIMEOUT_S), or on
    `connection`'s pool."""
    return ContinuousWorker(
        queues,
        connection=connection,
        feed_connection=feed_connection,
        loop=server,
        max_batch_size=max_batch_size,
        batch_timeout_ms=batch_timeout_ms,
        **rq_options,
    )
