"""The janitor: no accepted job stays with a dead worker.

rq alone cannot do this with per-worker queues: jobs waiting on the queue of a dead worker wait
forever, and its started jobs are only cleaned up by another worker of the same queue. The API
processes run this sweep every JANITOR_INTERVAL_S under a lock (one sweep at a time fleet-wide):

- a queue whose worker is dead (no live heartbeat record) has its waiting jobs moved to the
  least-loaded live queues;
- a started job whose worker process is not the live one (it died, or was replaced by a restart)
  is put back on a live queue with its attempt count raised, so it runs again (at-least-once);
  after MAX_JOB_ATTEMPTS runs that killed their worker it fails with a reason (a poison request);
- a job stuck in a queue's intermediate list (pulled by a worker that died before recording it)
  is put back the same way;
- a queue whose worker has been gone for DEAD_QUEUE_RETIRE_S and which is empty is retired
  (shared/queue/retirement.py), even with no live worker at all;
- a job awaiting a worker (accepted while none was live) past its deadline ends `expired`.

A job being moved is parked in a list first and recovered from there if the sweep itself dies.
Retried jobs run alone (the worker batches them with nothing else), so a poison request cannot
take its batch-mates down twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis import Redis
from redis.exceptions import LockError
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    StartedJobRegistry,
)

from shared import keys
from shared.contract import expired_error
from shared.fleet import WorkerInfo
from shared.queue import jobs, names
from shared.queue.finish import fail_poison, finalize_unrun
from shared.queue.fleet import least_loaded, read_loads, read_workers
from shared.queue.retirement import QueueRetirement
from shared.redis_text import text, texts
from shared.serializer import MsgpackSerializer
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.blob_retention import BlobRetention

log = logging.getLogger("omega.janitor")
LOCK = f"{keys.PREFIX}:lock:janitor"
MOVING = f"{keys.PREFIX}:janitor:moving"
TIDY_EVERY_S = 60.0  # expiring old registry entries is housekeeping, not recovery


@dataclass(frozen=True)
class SweepReport:
    moved: int = 0
    requeued: int = 0
    failed: int = 0
    retired: int = 0
    expired: int = 0


class Janitor:
    def __init__(self, redis: Redis, settings: Settings, retention: BlobRetention | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.retention = retention  # image blob retention, swept every BLOB_SWEEP_INTERVAL_S
        self._tidied = 0.0
        self.retirement = QueueRetirement(redis, settings.dead_queue_retire_s, settings.worker_ttl_s)
        self._blobs_swept: float | None = None
        lock_s = max(5.0, settings.janitor_interval_s * 5)
        # One sweep at a time fleet-wide; redis-py's Lock releases only if it still owns the key.
        self.lock = redis.lock(LOCK, timeout=lock_s, blocking=False)

    # --- the fleet ---------------------------------------------------------------------------
    def _alive(self) -> list[WorkerInfo]:
        """Workers with a fresh heartbeat, including ones draining before they stop."""
        workers = read_workers(self.redis, self.settings.worker_ttl_s)
        return [w for w in workers if w.state in ("loading", "ready", "stopping")]

    def _known_queues(self) -> set[str]:
        queues = (names.queue_name(key) for key in texts(self.redis.smembers(names.QUEUES)))
        return {q for q in queues if names.is_ours(q)}

    def _least_loaded(self, live: list[WorkerInfo]) -> str:
        return least_loaded(read_loads(self.redis, live)).worker.queue

    # --- moving jobs -------------------------------------------------------------------------
    def _enqueue(self, job_id: str, live: list[WorkerInfo], raise_attempts: bool) -> str:
        """Put a job on a live queue; returns "moved", "requeued", "failed" or "gone"."""
        job = jobs.fetch(self.redis, job_id)
        if job is None:
            return "gone"
        attempts = int(job.meta.get(jobs.ATTEMPTS, 0)) + (1 if raise_attempts else 0)
        if raise_attempts and attempts >= self.settings.max_job_attempts:
            fail_poison(self.redis, job, attempts, self.settings.job_result_ttl_s)
            return "failed"
        job.meta[jobs.ATTEMPTS] = attempts
        job.save_meta()
        jobs.enqueue_on(self.redis, self._least_loaded(live), job, at_front=True)  # it has waited long enough
        return "requeued" if raise_attempts else "moved"

    def _recover_parked(self, live: list[WorkerInfo], live_names: set[str]) -> None:
        """Finish what a sweep that died left half done: every parked job ends up somewhere."""
        for job_id in texts(self.redis.lrange(MOVING, 0, -1)):
            job = jobs.fetch(self.redis, job_id)
            if job is not None:
                status = job.get_status()
                placed = (
                    status in (RqStatus.FINISHED, RqStatus.FAILED, RqStatus.CANCELED, RqStatus.STOPPED)
                    or (status == RqStatus.QUEUED and self._queued(job))
                    or (status == RqStatus.STARTED and job.worker_name in live_names)
                )
                if not placed:
                    self._enqueue(job_id, live, raise_attempts=False)
            self.redis.lrem(MOVING, 1, job_id)

    def _unfinished(self, job_id: str) -> bool:
        job = jobs.fetch(self.redis, job_id)
        return job is not None and job.get_status() in (RqStatus.QUEUED, RqStatus.STARTED)

    def _queued(self, job: Job) -> bool:
        return bool(job.origin) and self.redis.lpos(names.queue_key(job.origin), job.id) is not None

    # --- the sweep ---------------------------------------------------------------------------
    def _move_waiting(self, queue_name: str, live: list[WorkerInfo]) -> int:
        moved = 0
        while (raw := self.redis.lmove(names.queue_key(queue_name), MOVING, "LEFT", "RIGHT")) is not None:
            job_id = text(raw)
            try:
                moved += self._enqueue(job_id, live, raise_attempts=False) == "moved"
            finally:
                self.redis.lrem(MOVING, 1, job_id)
        return moved

    def _abandoned(self, queue_name: str, live_names: set[str]) -> Iterable[tuple[str, str]]:
        """Job ids started on this queue by a worker process that is no longer alive."""
        registry = StartedJobRegistry(queue_name, connection=self.redis, serializer=MsgpackSerializer)
        seen: set[str] = set()
        # cleanup=False: rq's own cleanup would fail these jobs instead of running them again.
        for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
            entry = f"{job_id}:{execution_id}"
            job = jobs.fetch(self.redis, job_id)
            if job is None:
                self.redis.zrem(registry.key, entry)
                continue
            if job.worker_name in live_names or job.get_status() != RqStatus.STARTED:
                continue
            if job_id not in seen:
                seen.add(job_id)
                yield job_id, entry

    def _stuck_in_intermediate(self, queue_name: str) -> list[str]:
        """Ids the dead worker of this queue pulled (LMOVE) but never recorded as started.

        Only for queues without a live worker: a live worker's list holds jobs it is batching
        right now (and a restarted worker puts its predecessor's leftovers back itself)."""
        return texts(self.redis.lrange(names.intermediate_key(queue_name), 0, -1))

    def _tidy(self, queue_name: str) -> None:
        """Expire old entries of rq's other registries (rq's own maintenance is off in our workers)."""
        for registry_class in (FinishedJobRegistry, FailedJobRegistry, CanceledJobRegistry, DeferredJobRegistry):
            registry_class(queue_name, connection=self.redis, serializer=MsgpackSerializer).cleanup()

    def sweep(self) -> SweepReport:
        """One pass over every queue; does nothing unless it holds the fleet-wide lock."""
        if not self.lock.acquire():
            return SweepReport()
        try:
            self._sweep_blobs()
            return self._sweep()
        finally:
            try:
                self.lock.release()
            except LockError:  # expired during a very long sweep (another may hold it now): not ours
                log.warning("janitor lock expired before the sweep ended")

    def _expire_awaiting(self) -> int:
        """End `expired` the jobs awaiting a worker past their deadline (none may wait forever)."""
        expired = 0
        now = time.time()
        for job_id in texts(self.redis.lrange(keys.AWAITING_WORKER, 0, -1)):
            job = jobs.fetch(self.redis, job_id)
            if job is None:
                self.redis.lrem(keys.AWAITING_WORKER, 1, job_id)
            # Whoever takes it out of the list ends it (a cancel or the feeder may race us).
            elif now > jobs.hold_deadline(jobs.meta_of(job), self.settings.no_worker_wait_s) and self.redis.lrem(
                keys.AWAITING_WORKER, 1, job_id
            ):
                finalize_unrun(self.redis, job_id, expired_error(job_id), self.settings.job_result_ttl_s)
                expired += 1
        return expired

    def _sweep_blobs(self) -> None:
        """Unreferenced image blobs (shared/blob_retention.py), under this lock: one sweep fleet-wide."""
        last, every = self._blobs_swept, self.settings.blob_sweep_interval_s
        if self.retention is None or (last is not None and time.monotonic() - last < every):
            return
        self._blobs_swept = time.monotonic()
        try:
            self.retention.sweep()
        except Exception:  # retention is housekeeping: never in the way of recovering jobs
            log.exception("blob retention sweep failed")

    def _sweep(self) -> SweepReport:
        alive = self._alive()
        expired = self._expire_awaiting()
        known = self._known_queues()
        report = self._rescue(alive, known)
        # After the rescue, so a dead queue is empty by now whenever a live worker could take its jobs.
        self.retirement.forget_live(w.queue for w in alive)
        retired = self.retirement.retire_gone(sorted(known - {w.queue for w in alive}))
        if retired:
            log.info("janitor: retired %d queue(s) of workers gone for good: %s", len(retired), ", ".join(retired))
        return SweepReport(report.moved, report.requeued, report.failed, len(retired), expired)

    def _rescue(self, alive: list[WorkerInfo], known: set[str]) -> SweepReport:
        """Move every job of a dead queue, and every abandoned job, onto a live queue."""
        # Targets take new work; a draining worker finishes what it runs but gets nothing new.
        live = [w for w in alive if w.state != "stopping"]
        if not live:
            return SweepReport()  # nowhere to put anything: the jobs stay where they are
        live_queues = {w.queue for w in live}
        live_names = {w.rq_name for w in alive}
        self._recover_parked(live, live_names)
        moved = requeued = failed = 0
        tidy = time.monotonic() - self._tidied > TIDY_EVERY_S
        for queue_name in known:
            dead = queue_name not in live_queues
            if dead:
                moved += self._move_waiting(queue_name, live)
            started = names.started_key(queue_name)
            for job_id, entry in list(self._abandoned(queue_name, live_names)):
                # Parked before it leaves the registry: a sweep dying here loses nothing.
                self.redis.rpush(MOVING, job_id)
                self.redis.zrem(started, entry)
                outcome = self._enqueue(job_id, live, raise_attempts=True)
                self.redis.lrem(MOVING, 1, job_id)
                requeued += outcome == "requeued"
                failed += outcome == "failed"
            intermediate = names.intermediate_key(queue_name)
            for job_id in self._stuck_in_intermediate(queue_name) if dead else []:
                self.redis.rpush(MOVING, job_id)
                if self.redis.lrem(intermediate, 1, job_id) and self._unfinished(job_id):
                    moved += self._enqueue(job_id, live, raise_attempts=False) == "moved"
                self.redis.lrem(MOVING, 1, job_id)
            if tidy:
                self._tidy(queue_name)
        if tidy:
            self._tidied = time.monotonic()
        if moved or requeued or failed:
            log.warning(
                "janitor: moved %d waiting, requeued %d abandoned, failed %d poison job(s)", moved, requeued, failed
            )
        return SweepReport(moved, requeued, failed)
