"""Writing a new job so that a Redis primary's death cannot lose it once it is acknowledged.

Redis replicates asynchronously: a job the primary stored may not have reached any replica when
the primary dies, and Sentinel then promotes a replica without it. So the script that stores a
job runs in a non-transactional pipeline followed by `WAIT numreplicas timeout` on the same
connection (one round trip): WAIT answers how many replicas hold every write of that connection
so far. Fewer than REDIS_WAIT_REPLICAS in REDIS_WAIT_TIMEOUT_MS: the API answers 503 +
Retry-After (`ReplicationUnconfirmed`) instead of acknowledging a job that might vanish.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError
from redis.typing import EncodableT, KeyT

from shared.errors import ServiceUnavailable


class ReplicationUnconfirmed(ServiceUnavailable):
    """The job is on the primary, but too few replicas confirmed it in time."""

    def __init__(self, job_id: str, confirmed: int, wanted: int) -> None:
        super().__init__(
            f"job {job_id} was stored, but only {confirmed} of {wanted} Redis replica(s) confirmed it in "
            "time, so it could still be lost; retry (with the same Idempotency-Key to get this job back "
            "instead of a second one)",
            code="replication_unconfirmed",
        )
        self.job_id = job_id


@dataclass(frozen=True)
class Durability:
    """How many replicas must hold a new job before it is acknowledged (0: none, no WAIT)."""

    replicas: int = 0
    timeout_ms: int = 1000


class ConfirmedScript:
    """A Lua script that stores a job, run as EVALSHA (+ WAIT) in one round trip."""

    def __init__(self, redis: Redis, source: str, durability: Durability) -> None:
        self.redis = redis
        self.durability = durability
        self._script: AsyncScript = redis.register_script(source)  # computes the sha; loads lazily

    async def run(self, job_id: str, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
        """The script's reply; raises ReplicationUnconfirmed if WAIT confirms too few replicas."""
        for attempt in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)
                if self.durability.replicas:
                    pipe.wait(self.durability.replicas, self.durability.timeout_ms)
                try:
                    replies = await pipe.execute()
                except NoScriptError:
                    # A fresh server (a restart, or the replica promoted by a failover) has no
                    # script cache: load it and run again (NOSCRIPT means it did not run).
                    if attempt:
                        raise
                    await self.redis.script_load(self._script.script)
                    continue
            if self.durability.replicas and int(replies[1]) < self.durability.replicas:
                raise ReplicationUnconfirmed(job_id, int(replies[1]), self.durability.replicas)
            return replies[0]
        raise AssertionError("unreachable")
