"""Jobs as rq stores them: creating one, the hash rq's enqueue writes, and putting one on a queue.

The API writes jobs itself (shared/queue/admission.py) instead of through rq's Queue, so what it
writes must be what rq writes; tests/api/test_admission.py compares the two field by field.
"""

from __future__ import annotations

import msgspec
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT
from rq.exceptions import NoSuchJobError
from rq.job import Job as Job  # re-exported: callers hold jobs as opaque handles
from rq.job import JobStatus as RqStatus
from rq.queue import Queue
from rq.utils import now

from shared import keys
from shared.contract import JobMeta, JobPayload, encode
from shared.queue.durability import ConfirmedScript, Durability
from shared.serializer import MsgpackSerializer

JobFields = dict[FieldT, EncodableT]
# rq job meta: how many runs of this job ended with their worker dead (the janitor counts them).
ATTEMPTS = "attempts"


def create(redis: SyncRedis, payload: JobPayload, meta: JobMeta, ttl_s: int, timeout_s: int) -> Job:
    """A new job (not yet stored): the payload as msgpack, `meta` as rq's job meta."""
    return Job.create(
        func=keys.JOB_FUNC,
        args=(encode(payload),),
        id=payload.id,
        connection=redis,
        serializer=MsgpackSerializer,
        timeout=timeout_s,
        result_ttl=ttl_s,
        failure_ttl=ttl_s,
        meta=msgspec.to_builtins(meta),
        description=f"{payload.kind} job",
    )


def job_fields(job: Job) -> JobFields:
    """The job's Redis hash, as rq's Job.save writes it."""
    fields: JobFields = job.to_dict()
    return fields


def queued_fields(job: Job) -> JobFields:
    """The job's hash as rq's Queue.enqueue_job leaves it (enqueue time, queued status; the
    admission script adds the queue it chose as `origin`)."""
    job.enqueued_at = now()
    job._status = RqStatus.QUEUED
    return job_fields(job)


# KEYS: the job's hash, the lane. ARGV: the job id, then the hash as field, value, ...
# A script (atomic like MULTI/EXEC) so that WAIT can follow it in the same round trip.
LANE_PUSH_LUA = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('RPUSH', KEYS[2], ARGV[1])
"""


class LanePusher:
    """Stores batch-priority jobs and appends them to the batch lane (the feeder enqueues them later)."""

    def __init__(self, redis: Redis, durability: Durability = Durability()) -> None:
        self._script = ConfirmedScript(redis, LANE_PUSH_LUA, durability)

    async def push(self, job: Job) -> None:
        """Raises ReplicationUnconfirmed if too few replicas confirmed the job in time."""
        args: list[EncodableT] = [job.id]
        for field, value in job_fields(job).items():
            args += [field, value]
        await self._script.run(job.id, [job.key, keys.BATCH_LANE], args)


# KEYS: the awaiting-worker list, the job's hash. ARGV: most jobs the list may hold, the job id,
# then the hash as field, value, ... Returns 1 if the job was stored and appended, 0 if full.
HOLD_LUA = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
local fields = {}
for j = 3, #ARGV do fields[#fields + 1] = ARGV[j] end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('RPUSH', KEYS[1], ARGV[2])
return 1
"""


async def hold_for_worker(redis: Redis, job: Job, max_waiting: int) -> bool:
    """Store an interactive job accepted while no worker is live and append it to the
    awaiting-worker list; False (nothing stored) when that list already holds `max_waiting`."""
    args: list[EncodableT] = [max_waiting, job.id]
    for field, value in job_fields(job).items():
        args += [field, value]
    script = redis.register_script(HOLD_LUA)
    return bool(await script(keys=[keys.AWAITING_WORKER, job.key], args=args))


def hold_deadline(meta: JobMeta, max_wait_s: float) -> float:
    """When a job awaiting a worker expires: its own deadline, or NO_WORKER_WAIT_S after creation."""
    own = meta.expires_at if meta.expires_at is not None else float("inf")
    return min(own, meta.created_at + max_wait_s)


def fetch(redis: SyncRedis, job_id: str) -> Job | None:
    """The stored job, or None if it does not exist (never created, expired, or an id rq would
    never have made: rq raises ValueError for characters outside letters, digits, `_` and `-`)."""
    try:
        return Job.fetch(job_id, connection=redis, serializer=MsgpackSerializer)
    except (NoSuchJobError, ValueError):
        return None


def exists(redis: SyncRedis, job_id: str) -> bool:
    return bool(Job.exists(job_id, redis))


def meta_of(job: Job) -> JobMeta:
    """The job's meta as our `JobMeta` (raises msgspec.ValidationError for a foreign job)."""
    return msgspec.convert(job.meta, JobMeta)


def batch_of(job: Job) -> str | None:
    """The OpenAI batch a job belongs to, from its meta (None for any other job)."""
    batch_id = job.meta.get("batch_id") if isinstance(job.meta, dict) else None
    return str(batch_id) if batch_id else None


def is_canceled(job: Job) -> bool:
    """rq's cached status says canceled (no round trip)."""
    return bool(job.get_status(refresh=False) == RqStatus.CANCELED)


def is_enqueued(job: Job) -> bool:
    """Whether the job was ever put on a worker queue (a lane job has no origin yet)."""
    return bool(job.origin)


def enqueue_on(redis: SyncRedis, queue_name: str, job: Job, at_front: bool = False) -> None:
    """rq's own enqueue of a stored job onto a worker queue (the feeder's and the janitor's moves)."""
    Queue(queue_name, connection=redis, serializer=MsgpackSerializer).enqueue_job(job, at_front=at_front)
