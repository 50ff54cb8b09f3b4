"""The fleet as routing sees it: which workers are alive, how loaded each queue is, which is least loaded.

Read by the API (per request, async) and by the janitor (sync); both read the same keys the same way.
The admission script (shared/queue/admission.py) computes the same score inside Redis.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis

from shared import keys
from shared.fleet import WorkerInfo, decode_info
from shared.queue import names
from shared.redis_text import texts


@dataclass(frozen=True)
class QueueLoad:
    worker: WorkerInfo
    waiting: int
    in_flight: int

    @property
    def score(self) -> float:
        """Work per unit of capacity: what "least loaded" compares."""
        return (self.waiting + self.in_flight) / max(1, self.worker.capacity)


def by_load(loads: Sequence[QueueLoad]) -> list[QueueLoad]:
    """Least loaded first: lowest score, ready workers before loading ones on a tie, then by queue."""
    return sorted(loads, key=lambda q: (q.score, not q.worker.ready, q.worker.queue))


def least_loaded(loads: Sequence[QueueLoad]) -> QueueLoad:
    return by_load(loads)[0]


def _decode_records(raws: list[Any]) -> list[WorkerInfo]:
    infos = (decode_info(raw) for raw in raws if raw)
    return sorted((w for w in infos if w is not None), key=lambda w: w.id)


def _heartbeat_floor(ttl_s: float) -> float:
    return time.time() - ttl_s


def read_workers(redis: SyncRedis, ttl_s: float) -> list[WorkerInfo]:
    """Every worker record with a heartbeat within `ttl_s`, whatever its state, sorted by id."""
    ids = texts(redis.zrangebyscore(keys.WORKERS, _heartbeat_floor(ttl_s), "+inf"))
    return _decode_records(redis.mget([keys.worker_info(i) for i in ids])) if ids else []


async def read_workers_async(redis: Redis, ttl_s: float) -> list[WorkerInfo]:
    """`read_workers` for the API's event loop."""
    ids = texts(await redis.zrangebyscore(keys.WORKERS, _heartbeat_floor(ttl_s), "+inf"))
    return _decode_records(await redis.mget([keys.worker_info(i) for i in ids])) if ids else []


def _queue_counts(pipe: Any, workers: Sequence[WorkerInfo]) -> None:
    for worker in workers:
        pipe.llen(names.queue_key(worker.queue))
        pipe.zcard(names.started_key(worker.queue))
        pipe.llen(names.intermediate_key(worker.queue))  # pulled by a feeder, not started yet


def _loads(workers: Sequence[WorkerInfo], counts: list[Any]) -> list[QueueLoad]:
    """In flight: started, or pulled and about to start (the same sum the admission script makes)."""
    return [
        QueueLoad(w, int(counts[3 * i]), int(counts[3 * i + 1]) + int(counts[3 * i + 2])) for i, w in enumerate(workers)
    ]


def read_loads(redis: SyncRedis, workers: Sequence[WorkerInfo]) -> list[QueueLoad]:
    """Each worker queue's waiting and in-flight counts, in one round trip."""
    if not workers:
        return []
    with redis.pipeline(transaction=False) as pipe:
        _queue_counts(pipe, workers)
        return _loads(workers, pipe.execute())


async def read_loads_async(redis: Redis, workers: Sequence[WorkerInfo]) -> list[QueueLoad]:
    """`read_loads` for the API's event loop."""
    if not workers:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        _queue_counts(pipe, workers)
        return _loads(workers, await pipe.execute())


async def stranded_async(redis: Redis, live_queues: set[str]) -> int:
    """Jobs still on the queues of workers that are gone (waiting, pulled or started): the janitor
    moves them once a worker is live, so the autoscaling signal must count them meanwhile."""
    members = texts(await redis.smembers(names.QUEUES))
    dead = [q for q in (names.queue_name(m) for m in members) if names.is_ours(q) and q not in live_queues]
    if not dead:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for queue_name in dead:
            pipe.llen(names.queue_key(queue_name))
            pipe.llen(names.intermediate_key(queue_name))
            pipe.zcard(names.started_key(queue_name))
        return sum(int(n) for n in await pipe.execute())
