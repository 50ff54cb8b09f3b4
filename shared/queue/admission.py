"""Choosing a queue and enqueueing a job, as one atomic step inside Redis.

Routing needs each live queue's load (waiting + in flight, per unit of batch capacity), then an
enqueue on the least-loaded queue that is not full. Done from the API that is two round trips and
a race: two API replicas can both see room in the last slot. A Lua script does both at once: one
round trip on every interactive request, and MAX_QUEUE_SIZE holds exactly across any number of
API processes.

What the script writes is what rq's Queue.enqueue_job writes for our jobs (the job hash with
its queue as `origin`, the queue in rq's set of queues, the id at the end of the queue); a test
compares the two field by field.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.typing import EncodableT

from shared.fleet import WorkerInfo
from shared.queue import names
from shared.queue.durability import ConfirmedScript, Durability
from shared.queue.jobs import Job, queued_fields

# KEYS: rq's set of queues, the job's hash, then per candidate its queue, in-flight registry and
# intermediate list (jobs a continuous worker's feeder has pulled and not started yet: load too).
# ARGV: max waiting per queue, candidates, rotation, job id, then per candidate (capacity,
# ready 0/1, queue name), then the job hash as field, value, ...
# Returns {chosen candidate (1-based) or 0 if every queue is full, waiting_1, in_flight_1, ...}.
ADMIT_LUA = """
local max_size = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local rotation = tonumber(ARGV[3])
local job_id = ARGV[4]
local loads = {}
local best, best_ready, best_score = 0, 0, 0
for k = 0, n - 1 do
  local i = ((k + rotation) % n) + 1
  local waiting = redis.call('LLEN', KEYS[3 * i])
  local in_flight = redis.call('ZCARD', KEYS[1 + 3 * i]) + redis.call('LLEN', KEYS[2 + 3 * i])
  loads[2 * i - 1] = waiting
  loads[2 * i] = in_flight
  if waiting < max_size then
    local base = 4 + 3 * (i - 1)
    local ready = tonumber(ARGV[base + 2])
    local score = (waiting + in_flight) / math.max(1, tonumber(ARGV[base + 1]))
    if best == 0 or ready > best_ready or (ready == best_ready and score < best_score) then
      best, best_ready, best_score = i, ready, score
    end
  end
end
if best > 0 then
  local fields = {}
  for j = 5 + 3 * n, #ARGV do fields[#fields + 1] = ARGV[j] end
  redis.call('HSET', KEYS[2], unpack(fields))
  redis.call('HSET', KEYS[2], 'origin', ARGV[4 + 3 * (best - 1) + 3])
  redis.call('SADD', KEYS[1], KEYS[3 * best])
  redis.call('RPUSH', KEYS[3 * best], job_id)
end
table.insert(loads, 1, best)
return loads
"""


@dataclass(frozen=True)
class Admission:
    """Where the job went (None: every queue was full), and each candidate's load as seen."""

    worker: WorkerInfo | None
    waiting: list[int]
    in_flight: list[int]


class Admitter:
    def __init__(self, redis: Redis, max_queue_size: int, durability: Durability = Durability()) -> None:
        self.max_queue_size = max_queue_size
        # With replicas to wait for, WAIT rides in the same round trip (shared/queue/durability.py).
        self._script = ConfirmedScript(redis, ADMIT_LUA, durability)

    async def admit(self, job: Job, workers: Sequence[WorkerInfo]) -> Admission:
        """Enqueue a new job on the least-loaded live queue with room (ready workers before
        loading ones; ties broken at random so equal workers share the load). Raises
        ReplicationUnconfirmed if too few replicas confirmed an enqueued job in time."""
        script_keys: list[str] = [names.QUEUES, job.key]
        args: list[EncodableT] = [self.max_queue_size, len(workers), random.randrange(len(workers)), job.id]
        for w in workers:
            script_keys += [names.queue_key(w.queue), names.started_key(w.queue), names.intermediate_key(w.queue)]
            args += [max(1, w.capacity), int(w.ready), w.queue]
        for field, value in queued_fields(job).items():
            args += [field, value]
        reply = [int(x) for x in await self._script.run(job.id, script_keys, args)]
        chosen, loads = reply[0], reply[1:]
        return Admission(workers[chosen - 1] if chosen else None, loads[0::2], loads[1::2])
