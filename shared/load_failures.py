"""Why workers could not load the model, kept where the API can read it after they are gone.

A worker whose start fails records the reason under its id; the record outlives the worker's
heartbeat (the supervisor may have given up restarting it), so the API can answer 503 at once
with the reason, and /health can show it. A worker that becomes ready deletes its entry; a
restarted worker still loading after a failure is not routed to until it is ready.
"""

from __future__ import annotations

import time

import msgspec
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared.keys import PREFIX

LOAD_FAILURES = f"{PREFIX}:load_failures"  # hash: worker id -> LoadFailure (msgpack)
# Failures older than this are forgotten (hosts come and go; their entries must not linger).
MEMORY_S = 86400


class LoadFailure(msgspec.Struct, frozen=True):
    reason: str
    at: float


def record(redis: Redis, worker_id: str, reason: str) -> None:
    with redis.pipeline(transaction=True) as pipe:
        pipe.hset(LOAD_FAILURES, worker_id, msgspec.msgpack.encode(LoadFailure(reason, time.time())))
        pipe.expire(LOAD_FAILURES, MEMORY_S)
        pipe.execute()


def clear(redis: Redis, worker_id: str) -> None:
    redis.hdel(LOAD_FAILURES, worker_id)


def _decode(raw: bytes | str | None, now: float) -> LoadFailure | None:
    if raw is None:
        return None
    try:
        failure = msgspec.msgpack.decode(raw.encode() if isinstance(raw, str) else raw, type=LoadFailure)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return failure if now - failure.at < MEMORY_S else None


def previous(redis: Redis, worker_id: str) -> str | None:
    """This worker's last failed start, if it has not been ready since."""
    failure = _decode(redis.hget(LOAD_FAILURES, worker_id), time.time())
    return failure.reason if failure else None


async def latest(redis: AsyncRedis) -> str | None:
    """The most recent reason any worker gave for not loading, or None."""
    now = time.time()
    failures = [_decode(raw, now) for raw in (await redis.hgetall(LOAD_FAILURES)).values()]
    known = [f for f in failures if f is not None]
    return max(known, key=lambda f: f.at).reason if known else None
