"""Image blob retention (issue 12, item 3) on a real Redis, for the local and the S3 (moto) store:
a blob no request referenced for BLOB_TTL_S and no unfinished job names is deleted; one a queued
or running job names is kept; a reference during a deletion stores the bytes again."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared import keys
from shared.blob_retention import REFERENCED, BlobRetention, tombstone
from shared.blobstore import BlobStore, create_blob_store, image_key, put_image
from shared.contract import ImagePart, JobMeta, JobPayload, Message, SamplingParams, TextPart
from shared.queue import jobs, names
from shared.queue.janitor import Janitor
from shared.settings_sources import load_settings
from tests.shared.test_blobstore import s3_settings
from tests.support.images import image_bytes
from tests.support.procs import RedisServer

DB = 7
TTL = 3600
DAY_LATER = time.time() + 86400


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, s3_endpoint: str) -> Iterator[BlobStore]:
    if request.param == "local":
        env = {"BLOB_DIR": str(tmp_path / "blobs")}
    else:
        env = s3_settings(s3_endpoint, f"retention-{tmp_path.name}/")
    yield create_blob_store(load_settings(environ=env))


@pytest.fixture
def conn(redis_server: RedisServer) -> Redis:
    client = redis_server.client(DB)
    client.flushdb()
    return client


def lane_job(conn: Redis, url: str, job_id: str, blob: str) -> None:
    """A batch-priority job naming `blob`, waiting in the batch lane."""
    payload = JobPayload(
        id=job_id,
        messages=(Message("user", (ImagePart(blob), TextPart("caption"))),),
        params=SamplingParams(max_new_tokens=4),
        created_at=time.time(),
    )
    job = jobs.create(conn, payload, JobMeta(model="m", created_at=time.time(), priority="batch"), 600, 60)

    async def add() -> None:
        client = AsyncRedis.from_url(url)
        try:
            await jobs.LanePusher(client).push(job)
        finally:
            await client.aclose()

    asyncio.run(add())


def test_unreferenced_blobs_are_swept_after_the_ttl(conn: Redis, store: BlobStore, redis_server: RedisServer) -> None:
    retention = BlobRetention(conn, store, TTL)
    old, waiting, fresh = (put_image(store, image_bytes(color=(i, 0, 0)), retention) for i in (10, 20, 30))
    lane_job(conn, redis_server.url(DB), "waits-a-day", waiting)
    # `old` and `waiting` were last referenced over BLOB_TTL_S before the sweep; `fresh` just now.
    conn.zadd(REFERENCED, {fresh: DAY_LATER - 10})
    assert retention.sweep(now=time.time() + 10) == 0  # nothing is stale yet
    assert retention.sweep(now=DAY_LATER) == 1
    assert not store.exists(image_key(old))
    assert store.exists(image_key(waiting)) and store.exists(image_key(fresh))
    assert conn.zscore(REFERENCED, waiting) == DAY_LATER  # kept for its job, and counted from now


def test_a_reference_during_a_deletion_stores_the_bytes_again(conn: Redis, store: BlobStore) -> None:
    retention = BlobRetention(conn, store, TTL)
    data = image_bytes(color=(1, 2, 3))
    digest = put_image(store, data, retention)
    # A sweep is deleting it right now: the tombstone is up and the bytes are going.
    conn.set(tombstone(digest), "1")
    store.delete(image_key(digest))
    threading.Timer(0.3, conn.delete, args=(tombstone(digest),)).start()
    assert put_image(store, data, retention) == digest
    assert store.exists(image_key(digest))


def test_the_janitor_runs_the_sweep(conn: Redis, store: BlobStore) -> None:
    settings = load_settings(environ={"BLOB_TTL_S": "1"})
    retention = BlobRetention(conn, store, settings.blob_ttl_s)
    digest = put_image(store, image_bytes(color=(4, 5, 6)), retention)
    conn.zadd(REFERENCED, {digest: time.time() - 5})
    Janitor(conn, settings, retention).sweep()
    assert not store.exists(image_key(digest)) and conn.zscore(REFERENCED, digest) is None
    assert not conn.exists(keys.BATCH_LANE)


def test_a_running_job_keeps_its_blob(conn: Redis, store: BlobStore, redis_server: RedisServer) -> None:
    """A job in a worker queue's started registry (running) still needs its image."""
    retention = BlobRetention(conn, store, TTL)
    digest = put_image(store, image_bytes(color=(7, 8, 9)), retention)
    lane_job(conn, redis_server.url(DB), "running", digest)
    queue = "omega.worker-a"
    conn.lrem(keys.BATCH_LANE, 1, "running")
    conn.sadd(names.QUEUES, names.queue_key(queue))
    conn.zadd(names.started_key(queue), {"running:execution-1": time.time() + 60})
    assert retention.sweep(now=DAY_LATER) == 0 and store.exists(image_key(digest))
    conn.zrem(names.started_key(queue), "running:execution-1")  # it ended
    assert retention.sweep(now=DAY_LATER + TTL + 1) == 1 and not store.exists(image_key(digest))


def test_a_job_awaiting_a_worker_keeps_its_blob(conn: Redis, store: BlobStore, redis_server: RedisServer) -> None:
    """Jobs accepted while no worker is live wait in their own list: their images must survive."""
    retention = BlobRetention(conn, store, TTL)
    digest = put_image(store, image_bytes(color=(11, 12, 13)), retention)
    lane_job(conn, redis_server.url(DB), "held", digest)
    conn.lrem(keys.BATCH_LANE, 1, "held")
    conn.rpush(keys.AWAITING_WORKER, "held")
    assert retention.sweep(now=DAY_LATER) == 0
    assert store.exists(image_key(digest))
