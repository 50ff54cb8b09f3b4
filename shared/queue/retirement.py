"""Retiring the queues of workers that are gone for good.

A queue is named after its worker (WORKER_NAME plus device label), so every pod of a Deployment,
every host a worker ever ran on, leaves a queue behind. The janitor moves such a queue's jobs to
live queues; once a worker has been gone for DEAD_QUEUE_RETIRE_S and its queue is empty, the
queue leaves rq's queue set (what `rq info` and the janitor's sweep list) and its leftovers
(registries, heartbeat entry) are deleted, so no fleet view shows it again. A worker that comes
back under the same name simply enqueues into it again (rq re-adds it to the set).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from redis import Redis
from redis.typing import EncodableT
from rq.queue import Queue
from rq.worker_registration import clean_worker_registry

from shared import keys
from shared.queue import names
from shared.serializer import MsgpackSerializer

# Hash: queue name -> when a sweep first found it without a live worker (used when the worker
# left no heartbeat entry to date its death by, e.g. it left cleanly).
DEAD_SINCE = f"{keys.PREFIX}:janitor:dead-since"

# KEYS: rq's queue set, the queue, its intermediate list, its started registry, the workers'
# heartbeat set, DEAD_SINCE, then the keys to delete with the queue.
# ARGV: the queue's key (member of the set), worker id, heartbeat floor (older = gone), queue name.
# Checked and done at once: a worker that beat again, or a job that arrived, keeps the queue.
RETIRE_LUA = """
if redis.call('LLEN', KEYS[2]) > 0 or redis.call('LLEN', KEYS[3]) > 0 or redis.call('ZCARD', KEYS[4]) > 0 then
  return 0
end
local beat = redis.call('ZSCORE', KEYS[5], ARGV[2])
if beat and tonumber(beat) >= tonumber(ARGV[3]) then return 0 end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[2])
redis.call('HDEL', KEYS[6], ARGV[4])
for i = 7, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""


class QueueRetirement:
    def __init__(self, redis: Redis, retire_after_s: float, heartbeat_ttl_s: float) -> None:
        self.redis = redis
        self.retire_after_s = retire_after_s
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self._script = redis.register_script(RETIRE_LUA)

    def gone_since(self, queue_name: str, now: float) -> float:
        """When the queue's worker was last seen: its last heartbeat, else the first sweep that
        missed it."""
        beat = self.redis.zscore(keys.WORKERS, keys.queue_worker(queue_name))
        if beat is not None:
            return float(beat)
        self.redis.hsetnx(DEAD_SINCE, queue_name, now)
        first = self.redis.hget(DEAD_SINCE, queue_name)
        return float(first) if first is not None else now

    def forget_live(self, live_queues: Iterable[str]) -> None:
        """A queue whose worker is back is no longer counted as dead."""
        if queues := list(live_queues):
            self.redis.hdel(DEAD_SINCE, *queues)

    def retire_gone(self, dead_queues: Iterable[str]) -> list[str]:
        """Retire each dead queue whose worker is gone long enough and which is empty."""
        now = time.time()
        retired = []
        for queue_name in dead_queues:
            if now - self.gone_since(queue_name, now) >= self.retire_after_s and self.retire(queue_name, now):
                retired.append(queue_name)
        return retired

    def retire(self, queue_name: str, now: float) -> bool:
        script_keys = [
            names.QUEUES,
            names.queue_key(queue_name),
            names.intermediate_key(queue_name),
            names.started_key(queue_name),
            keys.WORKERS,
            DEAD_SINCE,
            *names.other_registry_keys(queue_name),
            keys.worker_metrics(keys.queue_worker(queue_name)),
        ]
        worker_id = keys.queue_worker(queue_name)
        args: list[EncodableT] = [names.queue_key(queue_name), worker_id, now - self.heartbeat_ttl_s, queue_name]
        if not self._script(keys=script_keys, args=args):
            return False
        # rq's own record of which (long dead) rq workers listened on the queue.
        clean_worker_registry(Queue(queue_name, connection=self.redis, serializer=MsgpackSerializer))
        return True
