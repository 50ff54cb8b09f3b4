"""The micro-batch worker on a real Redis: one generate per micro-batch, every job ends in a registry."""

from __future__ import annotations

import time
from pathlib import Path

from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.results import Result

from shared import keys
from shared.blob_local import LocalBlobStore
from shared.blobstore import put_image
from shared.contract import (
    ImagePart,
    JobPayload,
    Message,
    SamplingParams,
    TextPart,
    decode_error,
    decode_result,
    encode,
)
from shared.queue.worker import MicroBatch, MicroBatchWorker
from shared.serializer import MsgpackSerializer
from tests.support.images import image_bytes
from tests.support.procs import RedisServer
from workers.engine import Engine
from workers.images import ImageLoader
from workers.micro_batches import ModelHandler, model_worker
from workers.runner import MicroBatchRunner


def payload(i: int, blob: str | None = None) -> JobPayload:
    parts = ((ImagePart(blob),) if blob else ()) + (TextPart(f"job {i}"),)
    return JobPayload(
        id=f"job-{i}",
        messages=(Message("user", parts),),
        params=SamplingParams(max_new_tokens=4, min_new_tokens=4),
        created_at=time.time(),
    )


def test_batch_worker_runs_one_batch_and_records_every_job(
    engine: Engine, redis_server: RedisServer, tmp_path: Path
) -> None:
    conn = redis_server.client(db=15)
    conn.flushdb()
    store = LocalBlobStore(tmp_path / "blobs")
    good_blob = put_image(store, image_bytes("PNG"))
    queue = Queue("omega.unit", connection=conn, serializer=MsgpackSerializer)

    def enqueue(job_id: str, data: bytes) -> None:
        queue.enqueue_call(func=keys.JOB_FUNC, args=(data,), job_id=job_id, result_ttl=600, failure_ttl=600)

    for i in range(5):
        enqueue(f"job-{i}", encode(payload(i, good_blob if i % 2 else None)))
    enqueue("job-missing-blob", encode(payload(5, "0" * 64)))
    enqueue("job-garbage", b"\x00 not a payload")

    runner = MicroBatchRunner(engine, ImageLoader(store, engine.settings), "unit-worker")
    worker = model_worker([queue], connection=conn, runner=runner, max_batch_size=8, batch_timeout_ms=0)
    calls = engine.generate_calls
    worker.work(burst=True)

    assert engine.generate_calls == calls + 1
    finished = set(FinishedJobRegistry(queue=queue).get_job_ids())
    failed = set(FailedJobRegistry(queue=queue).get_job_ids())
    assert finished == {f"job-{i}" for i in range(5)}
    assert failed == {"job-missing-blob", "job-garbage"}
    assert StartedJobRegistry(queue=queue).get_job_ids() == []
    assert conn.llen(queue.intermediate_queue_key) == 0 and len(queue) == 0

    for i in range(5):
        job = Job.fetch(f"job-{i}", connection=conn, serializer=MsgpackSerializer)
        assert job.get_status() == JobStatus.FINISHED
        result = decode_result(Result.fetch_latest(job, serializer=MsgpackSerializer).return_value)
        assert result.completion_tokens == 4 and result.micro_batch_size == 5 and result.worker == "unit-worker"
    missing = Job.fetch("job-missing-blob", connection=conn, serializer=MsgpackSerializer)
    error = decode_error(Result.fetch_latest(missing, serializer=MsgpackSerializer).exc_string)
    assert error is not None and error.status == 404
    garbage = Job.fetch("job-garbage", connection=conn, serializer=MsgpackSerializer)
    error = decode_error(Result.fetch_latest(garbage, serializer=MsgpackSerializer).exc_string)
    assert error is not None and error.status == 500 and "Traceback" not in error.message


def test_max_batch_size_splits_batches(engine: Engine, redis_server: RedisServer, tmp_path: Path) -> None:
    conn = redis_server.client(db=14)
    conn.flushdb()
    queue = Queue("omega.unit2", connection=conn, serializer=MsgpackSerializer)
    for i in range(7):
        queue.enqueue_call(func=keys.JOB_FUNC, args=(encode(payload(i)),), job_id=f"b-{i}")
    runner = MicroBatchRunner(engine, ImageLoader(LocalBlobStore(tmp_path), engine.settings), "unit-worker")
    sizes: list[int] = []
    worker = model_worker(
        [queue],
        connection=conn,
        runner=runner,
        max_batch_size=3,
        batch_timeout_ms=0,
        on_micro_batch=lambda size, _s: sizes.append(size),
    )
    worker.work(burst=True)
    assert sizes == [3, 3, 1]
    assert len(FinishedJobRegistry(queue=queue)) == 7


class CountingStore(LocalBlobStore):
    reads = 0

    def get_bytes(self, key: str) -> bytes:
        CountingStore.reads += 1
        return super().get_bytes(key)


def test_images_of_the_next_batch_are_fetched_while_this_one_generates(
    engine: Engine, redis_server: RedisServer, tmp_path: Path
) -> None:
    conn = redis_server.client(db=13)
    conn.flushdb()
    store = CountingStore(tmp_path / "blobs")
    blobs = [put_image(store, image_bytes("PNG", (40 + i, 30), (i * 40, 10, 10))) for i in range(4)]
    queue = Queue("omega.unit3", connection=conn, serializer=MsgpackSerializer)
    for i, blob in enumerate(blobs):
        queue.enqueue_call(func=keys.JOB_FUNC, args=(encode(payload(i, blob)),), job_id=f"p-{i}")
    loader = ImageLoader(store, engine.settings)
    runner = MicroBatchRunner(engine, loader, "unit-worker")
    worker = model_worker([queue], connection=conn, runner=runner, max_batch_size=2, batch_timeout_ms=0)
    CountingStore.reads = 0
    worker.work(burst=True)
    assert len(FinishedJobRegistry(queue=queue)) == 4
    assert CountingStore.reads == 4  # each image fetched once
    # The second batch found its rows prepared, or at least its images decoded, ahead of time.
    assert runner.read_ahead.hits + loader.cache.hits >= 2


def test_text_only_batches_do_not_read_ahead(engine: Engine, redis_server: RedisServer, tmp_path: Path) -> None:
    """Reading the waiting jobs costs the generating process CPU: only batches with images do it."""
    conn = redis_server.client(db=12)
    conn.flushdb()
    store = LocalBlobStore(tmp_path / "blobs")
    blob = put_image(store, image_bytes("PNG"))
    queue = Queue("omega.unit4", connection=conn, serializer=MsgpackSerializer)
    # Two text-only batches, then two image batches, two jobs each.
    for i in range(8):
        queue.enqueue_call(func=keys.JOB_FUNC, args=(encode(payload(i, blob if i >= 4 else None)),), job_id=f"t-{i}")
    read_ahead: list[int] = []

    class Recording(ModelHandler):
        def _prefetch(self, batch: MicroBatch) -> None:
            read_ahead.append(len(queue))
            super()._prefetch(batch)

    runner = MicroBatchRunner(engine, ImageLoader(store, engine.settings), "unit-worker")
    worker = MicroBatchWorker(
        [queue], connection=conn, handler=Recording(runner, conn), max_batch_size=2, batch_timeout_ms=0
    )
    worker.work(burst=True)
    assert len(FinishedJobRegistry(queue=queue)) == 8
    assert read_ahead == [2, 0]  # the two image batches only (the last one found nothing left)
