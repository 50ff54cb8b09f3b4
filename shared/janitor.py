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
  is put back the same way.

A job being moved is parked in a list first and recovered from there if the sweep itself dies.
Retried jobs run alone (the worker batches them with nothing else), so a poison request cannot
take its batch-mates down twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result

from shared import keys
from shared.contract import JobError, encode_error
from shared.fleet import WorkerInfo, decode_info
from shared.serializer import MsgpackSerializer
from shared.settings import Settings

log = logging.getLogger("omega.janitor")
LOCK = f"{keys.PREFIX}:lock:janitor"
MOVING = f"{keys.PREFIX}:janitor:moving"
ATTEMPTS = "attempts"  # rq job meta: how many runs ended with their worker dead
TIDY_EVERY_S = 60.0  # expiring old registry entries is housekeeping, not recovery


def poison_error(job_id: str, attempts: int) -> JobError:
    return JobError(
        status=500,
        type="server_error",
        code="worker_crashed",
        message=f"job {job_id} was running when its worker died, {attempts} times: it is not retried "
        "again (MAX_JOB_ATTEMPTS)",
    )


@dataclass(frozen=True)
class SweepReport:
    moved: int = 0
    requeued: int = 0
    failed: int = 0


class Janitor:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._tidied = 0.0

    # --- the fleet ---------------------------------------------------------------------------
    def _alive(self) -> list[WorkerInfo]:
        """Workers with a fresh heartbeat, including ones draining before they stop."""
        now = time.time()
        ids = self.redis.zrangebyscore(keys.WORKERS, now - self.settings.worker_ttl_s, "+inf")
        names = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
        raws = self.redis.mget([keys.worker_info(n) for n in names]) if names else []
        infos = [decode_info(raw) for raw in raws if raw]
        return [w for w in infos if w is not None and w.state in ("loading", "ready", "stopping")]

    def _known_queues(self) -> set[str]:
        prefix = Queue.redis_queue_namespace_prefix
        raw = self.redis.smembers(Queue.redis_queues_keys)
        names = {(k.decode() if isinstance(k, bytes) else str(k)).removeprefix(prefix) for k in raw}
        return {n for n in names if n.startswith(f"{keys.PREFIX}.")}

    def _least_loaded(self, live: list[WorkerInfo]) -> str:
        with self.redis.pipeline(transaction=False) as pipe:
            for worker in live:
                pipe.llen(keys.rq_queue_key(worker.queue))
                pipe.zcard(keys.rq_started_key(worker.queue))
            counts = pipe.execute()
        scores = [
            ((counts[2 * i] + counts[2 * i + 1]) / max(1, w.capacity), not w.ready, w.queue) for i, w in enumerate(live)
        ]
        return min(scores)[2]

    # --- moving jobs -------------------------------------------------------------------------
    def _enqueue(self, job_id: str, live: list[WorkerInfo], raise_attempts: bool) -> str:
        """Put a job on a live queue; returns "moved", "requeued", "failed" or "gone"."""
        try:
            job = Job.fetch(job_id, connection=self.redis, serializer=MsgpackSerializer)
        except NoSuchJobError:
            return "gone"
        attempts = int(job.meta.get(ATTEMPTS, 0)) + (1 if raise_attempts else 0)
        if raise_attempts and attempts >= self.settings.max_job_attempts:
            self._fail(job, poison_error(job_id, attempts))
            return "failed"
        job.meta[ATTEMPTS] = attempts
        job.save_meta()
        queue = Queue(self._least_loaded(live), connection=self.redis, serializer=MsgpackSerializer)
        queue.enqueue_job(job, at_front=True)  # it has waited long enough
        return "requeued" if raise_attempts else "moved"

    def _fail(self, job: Job, error: JobError) -> None:
        ttl = job.failure_ttl or self.settings.job_result_ttl_s
        with self.redis.pipeline() as pipe:
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            FailedJobRegistry(job.origin, connection=self.redis, serializer=MsgpackSerializer).add(
                job, ttl, exc_string=encode_error(error), pipeline=pipe
            )
            Result.create_failure(job, ttl, exc_string=encode_error(error), pipeline=pipe)
            batch_id = job.meta.get("batch_id")
            if batch_id:
                pipe.hincrby(keys.batch_record(batch_id), "failed", 1)
            pipe.execute()
        log.warning("job %s failed: %s", job.id, error.message)

    def _recover_parked(self, live: list[WorkerInfo], live_names: set[str]) -> None:
        """Finish what a sweep that died left half done: every parked job ends up somewhere."""
        for raw in self.redis.lrange(MOVING, 0, -1):
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                job = Job.fetch(job_id, connection=self.redis, serializer=MsgpackSerializer)
                status = job.get_status()
                placed = (
                    status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED)
                    or (status == JobStatus.QUEUED and self._queued(job))
                    or (status == JobStatus.STARTED and job.worker_name in live_names)
                )
                if not placed:
                    self._enqueue(job_id, live, raise_attempts=False)
            except NoSuchJobError:
                pass
            self.redis.lrem(MOVING, 1, job_id)

    def _unfinished(self, job_id: str) -> bool:
        try:
            status = Job.fetch(job_id, connection=self.redis, serializer=MsgpackSerializer).get_status()
        except NoSuchJobError:
            return False
        return status in (JobStatus.QUEUED, JobStatus.STARTED)

    def _queued(self, job: Job) -> bool:
        return bool(job.origin) and self.redis.lpos(keys.rq_queue_key(job.origin), job.id) is not None

    # --- the sweep ---------------------------------------------------------------------------
    def _move_waiting(self, queue_name: str, live: list[WorkerInfo]) -> int:
        moved = 0
        while (raw := self.redis.lmove(keys.rq_queue_key(queue_name), MOVING, "LEFT", "RIGHT")) is not None:
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
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
            try:
                job = Job.fetch(job_id, connection=self.redis, serializer=MsgpackSerializer)
            except NoSuchJobError:
                self.redis.zrem(registry.key, entry)
                continue
            if job.worker_name in live_names or job.get_status() != JobStatus.STARTED:
                continue
            if job_id not in seen:
                seen.add(job_id)
                yield job_id, entry

    def _stuck_in_intermediate(self, queue_name: str) -> Iterable[str]:
        """Ids the dead worker of this queue pulled (LMOVE) but never recorded as started.

        Only for queues without a live worker: a live worker's list holds jobs it is batching
        right now (and a restarted worker puts its predecessor's leftovers back itself)."""
        key = Queue(queue_name, connection=self.redis).intermediate_queue_key
        for raw in self.redis.lrange(key, 0, -1):
            yield raw.decode() if isinstance(raw, bytes) else str(raw)

    def _tidy(self, queue_name: str) -> None:
        """Expire old entries of rq's other registries (rq's own maintenance is off in our workers)."""
        for registry_class in (FinishedJobRegistry, FailedJobRegistry, CanceledJobRegistry, DeferredJobRegistry):
            registry_class(queue_name, connection=self.redis, serializer=MsgpackSerializer).cleanup()

    def sweep(self) -> SweepReport:
        """One pass over every queue; does nothing unless it holds the fleet-wide lock."""
        lock_ms = int(max(5.0, self.settings.janitor_interval_s * 5) * 1000)
        if not self.redis.set(LOCK, "1", nx=True, px=lock_ms):
            return SweepReport()
        try:
            alive = self._alive()
            # Targets take new work; a draining worker finishes what it runs but gets nothing new.
            live = [w for w in alive if w.state != "stopping"]
            if not live:
                return SweepReport()  # nowhere to put anything: the jobs stay where they are
            live_queues = {w.queue for w in live}
            live_names = {w.rq_name for w in alive}
            self._recover_parked(live, live_names)
            moved = requeued = failed = 0
            for queue_name in self._known_queues():
                dead = queue_name not in live_queues
                if dead:
                    moved += self._move_waiting(queue_name, live)
                started = StartedJobRegistry(queue_name, connection=self.redis).key
                for job_id, entry in list(self._abandoned(queue_name, live_names)):
                    # Parked before it leaves the registry: a sweep dying here loses nothing.
                    self.redis.rpush(MOVING, job_id)
                    self.redis.zrem(started, entry)
                    outcome = self._enqueue(job_id, live, raise_attempts=True)
                    self.redis.lrem(MOVING, 1, job_id)
                    requeued += outcome == "requeued"
                    failed += outcome == "failed"
                intermediate = Queue(queue_name, connection=self.redis).intermediate_queue_key
                for job_id in list(self._stuck_in_intermediate(queue_name)) if dead else []:
                    self.redis.rpush(MOVING, job_id)
                    if self.redis.lrem(intermediate, 1, job_id) and self._unfinished(job_id):
                        moved += self._enqueue(job_id, live, raise_attempts=False) == "moved"
                    self.redis.lrem(MOVING, 1, job_id)
                if time.monotonic() - self._tidied > TIDY_EVERY_S:
                    self._tidy(queue_name)
            if time.monotonic() - self._tidied > TIDY_EVERY_S:
                self._tidied = time.monotonic()
            if moved or requeued or failed:
                log.warning(
                    "janitor: moved %d waiting, requeued %d abandoned, failed %d poison job(s)", moved, requeued, failed
                )
            return SweepReport(moved, requeued, failed)
        finally:
            self.redis.delete(LOCK)
