"""Image blob retention: an image no request has referenced for BLOB_TTL_S, and that no unfinished
job names, is deleted from the blob store (local or S3).

Every request that references an image touches its digest in a Redis sorted set (digest -> last
referenced time), before it looks for the blob. The janitor runs `sweep` under its fleet-wide lock
every BLOB_SWEEP_INTERVAL_S: digests last referenced before now - BLOB_TTL_S are candidates; any
still named by a job that is waiting (batch lane, worker queues, being moved) or running (started
registries, workers' intermediate lists) is kept and touched again.

Deleting races with a request referencing the same image at that moment. A tombstone closes the
race: the sweep drops the digest from the set and sets `deleting:<digest>` in one script, only if
the digest was not touched since it was chosen; a request that touches a digest while its
tombstone is up waits for the deletion to end and then stores the bytes again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from redis import Redis as SyncRedis

from shared import keys
from shared.blobstore import BlobStore, image_key
from shared.contract import decode_payload
from shared.queue import jobs, names
from shared.queue.janitor import MOVING
from shared.redis_text import texts

log = logging.getLogger("omega.blob_retention")
REFERENCED = f"{keys.PREFIX}:blobs:referenced"
TOMBSTONE_S = 120  # a sweep that dies mid-delete frees its tombstone after this
SWEEP_CHUNK = 500

# KEYS[1]: the referenced set, KEYS[2]: the tombstone. ARGV: digest, cutoff, tombstone seconds.
_CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], '1', 'EX', tonumber(ARGV[3]))
return 1
"""


def tombstone(digest: str) -> str:
    return f"{keys.PREFIX}:blobs:deleting:{digest}"


class BlobRetention:
    """Touches image digests when requests reference them, and sweeps the stale ones."""

    def __init__(self, redis: SyncRedis, store: BlobStore, ttl_s: int) -> None:
        self.redis = redis
        self.store = store
        self.ttl_s = ttl_s
        self._claim = redis.register_script(_CLAIM)

    def touch(self, digest: str) -> bool:
        """Record a reference now; True if the blob must be (re)written whatever the store says
        (a sweep was deleting it: waits, at most TOMBSTONE_S, for that to end)."""
        self.redis.zadd(REFERENCED, {digest: time.time()})
        deadline = time.monotonic() + TOMBSTONE_S
        waited = False
        while self.redis.exists(tombstone(digest)) and time.monotonic() < deadline:
            waited = True
            time.sleep(0.01)
        return waited

    # --- the sweep ---------------------------------------------------------------------------
    def _unfinished_job_ids(self) -> set[str]:
        """Every job that is waiting or running, wherever it is."""
        lists = [keys.BATCH_LANE, keys.BATCH_LANE_FEEDING, keys.AWAITING_WORKER, MOVING]
        started: list[str] = []
        for queue_name in (names.queue_name(k) for k in texts(self.redis.smembers(names.QUEUES))):
            lists += [names.queue_key(queue_name), names.intermediate_key(queue_name)]
            started.append(names.started_key(queue_name))
        ids: set[str] = set()
        for key in lists:
            ids.update(texts(self.redis.lrange(key, 0, -1)))
        for key in started:  # entries are "<job id>:<execution id>"
            ids.update(entry.split(":", 1)[0] for entry in texts(self.redis.zrange(key, 0, -1)))
        return ids

    def _named_by(self, job_ids: Iterable[str]) -> set[str]:
        """The image digests these jobs' payloads reference."""
        digests: set[str] = set()
        for job_id in job_ids:
            job = jobs.fetch(self.redis, job_id)
            if job is None:
                continue
            try:
                digests.update(decode_payload(job.args[0]).image_blobs)
            except Exception as exc:  # a foreign job on our queues: only our payloads name our blobs
                log.debug("blob retention: job %s has no payload of ours (%s)", job_id, exc)
        return digests

    def sweep(self, now: float | None = None) -> int:
        """Delete image blobs unreferenced for BLOB_TTL_S and named by no unfinished job; returns
        how many were deleted. BLOB_TTL_S=0 keeps every blob."""
        if self.ttl_s <= 0:
            return 0
        now = time.time() if now is None else now
        cutoff = now - self.ttl_s
        stale = texts(self.redis.zrangebyscore(REFERENCED, "-inf", cutoff, start=0, num=SWEEP_CHUNK))
        if not stale:
            return 0
        in_use = self._named_by(self._unfinished_job_ids())
        deleted = 0
        for digest in stale:
            if digest in in_use:
                # A job waiting longer than the TTL: it still needs its image.
                self.redis.zadd(REFERENCED, {digest: now})
                continue
            if not self._claim(keys=[REFERENCED, tombstone(digest)], args=[digest, cutoff, TOMBSTONE_S]):
                continue  # referenced again since it was chosen
            try:
                self.store.delete(image_key(digest))
                deleted += 1
            finally:
                self.redis.delete(tombstone(digest))
        if deleted:
            log.info("blob retention: deleted %d image blob(s) unreferenced for %d s", deleted, self.ttl_s)
        return deleted


def referenced_at(redis: SyncRedis, digest: str) -> float | None:
    """When a request last referenced this image (None: never, or swept)."""
    score = redis.zscore(REFERENCED, digest)
    return float(score) if score is not None else None
