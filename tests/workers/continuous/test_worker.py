"""The continuous worker on a real Redis, in-process: jobs join and leave the running batch
through the queue, with rq's bookkeeping per job.

Each scenario runs on the demo LLaVA, a text-only Llama and a tiny Qwen2.5-VL (M-RoPE), loaded
by the worker's own loader.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from redis import Redis
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.results import Result

from shared import keys
from shared.blob_local import LocalBlobStore
from shared.blobstore import put_image
from shared.contract import (
    CANCELED,
    ImagePart,
    JobError,
    JobPayload,
    JobResult,
    Message,
    SamplingParams,
    TextPart,
    decode_error,
    decode_result,
    encode,
)
from shared.queue.continuous import ContinuousWorker
from shared.serializer import MsgpackSerializer
from shared.settings_sources import load_settings
from tests.support.images import image_bytes
from tests.support.procs import RedisServer
from workers.continuous.scheduler import Limits
from workers.continuous.serving import Load, StepServer, continuous_worker
from workers.engine import Engine
from workers.images import ImageLoader
from workers.loader import load_model
from workers.tiny_models.build import ensure_family_model
from workers.tiny_models.families import FAMILIES

MODELS = ["demo", "llama", "qwen2_5_vl"]


@pytest.fixture(scope="module")
def engines(engine: Engine, text_engine: Engine) -> dict[str, Engine]:
    return {"demo": engine, "llama": text_engine}


def model_engine(engines: dict[str, Engine], key: str) -> Engine:
    if key not in engines:
        torch.set_num_threads(1)
        path = ensure_family_model(FAMILIES[key], Path(tempfile.mkdtemp(prefix="omega-cb-")))
        settings = load_settings(environ={"MODEL_PATH": str(path), "MAX_INPUT_TOKENS": "256"})
        engines[key] = Engine(load_model(settings, torch.device("cpu"), lambda _: None), settings)
    return engines[key]


@dataclass
class Rig:
    """A continuous worker on one queue of a real Redis, run in a thread."""

    engine: Engine
    conn: Redis
    store: LocalBlobStore
    limits: Limits
    loads: list[Load] = field(default_factory=list)
    queue: Queue = field(init=False)
    server: StepServer = field(init=False)
    worker: ContinuousWorker = field(init=False)
    thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.queue = Queue("omega.cb-unit", connection=self.conn, serializer=MsgpackSerializer)
        images = ImageLoader(self.store, self.engine.settings)
        self.server = StepServer(self.engine, images, self.conn, "cb-worker", self.limits, on_load=self.loads.append)
        self.worker = continuous_worker(
            [self.queue.name],
            connection=self.conn,
            server=self.server,
            max_batch_size=self.limits.max_rows,
            batch_timeout_ms=0,
            serializer=MsgpackSerializer,
        )

    def enqueue(self, job: JobPayload, attempts: int = 0) -> None:
        self.queue.enqueue_call(
            func=keys.JOB_FUNC,
            args=(encode(job),),
            job_id=job.id,
            result_ttl=600,
            failure_ttl=600,
            meta={"attempts": attempts} if attempts else None,
        )

    def start(self) -> None:
        # Signal handlers can only be installed from the main thread; this worker runs in another.
        self.worker._install_signal_handlers = lambda: None
        self.thread = threading.Thread(target=lambda: self.worker.work(burst=True), daemon=True)
        self.thread.start()

    def join(self, timeout: float = 300) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not finish"

    def run(self) -> None:
        self.start()
        self.join()

    def job(self, job_id: str) -> Job:
        return Job.fetch(job_id, connection=self.conn, serializer=MsgpackSerializer)

    def outcome(self, job_id: str) -> JobResult | JobError:
        result = Result.fetch_latest(self.job(job_id), serializer=MsgpackSerializer)
        assert result is not None, f"no outcome for {job_id}"
        if result.type == Result.Type.SUCCESSFUL:
            return decode_result(result.return_value)
        error = decode_error(result.exc_string or "")
        assert error is not None
        return error

    def result(self, job_id: str) -> JobResult:
        outcome = self.outcome(job_id)
        assert isinstance(outcome, JobResult), outcome
        return outcome

    def running_tokens(self, job_id: str) -> int:
        batch = self.server.ce.batch
        rows = list(batch.rows) if batch is not None else []
        return next((len(r.tokens) for r in rows if r.row.job.id == job_id), 0)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.fixture
def rig_factory(engines: dict[str, Engine], redis_server: RedisServer, tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    conn = redis_server.client(db=14)
    conn.flushdb()
    store = LocalBlobStore(tmp_path / "blobs")

    def make(model: str, limits: Limits | None = None) -> Rig:
        return Rig(model_engine(engines, model), conn, store, limits or Limits(max_rows=8))

    yield make
    conn.flushdb()


def job(
    rig: Rig,
    job_id: str,
    tokens: int,
    image: bool = False,
    seed: int | None = None,
    prompt: str | None = None,
    **params: Any,
) -> JobPayload:
    parts: tuple[Any, ...] = (TextPart(prompt or f"tell me about {job_id}"),)
    if image and rig.engine.m.supports_images:
        digest = put_image(rig.store, image_bytes("PNG", (64, 48), (20, 160, 90)))
        parts = (ImagePart(digest), *parts)
    sampling: dict[str, Any] = {"temperature": 0.9, "top_p": 0.9, "do_sample": True} if seed is not None else {}
    return JobPayload(
        id=job_id,
        messages=(Message("user", parts),),
        params=SamplingParams(max_new_tokens=tokens, min_new_tokens=tokens, seed=seed, **sampling, **params),
        created_at=time.time(),
    )


@pytest.mark.parametrize("model", MODELS)
def test_a_short_job_admitted_while_a_long_one_runs_returns_first_with_its_seeded_text(
    rig_factory: Callable[..., Rig], model: str
) -> None:
    alone = rig_factory(model)
    alone.enqueue(job(alone, "short-alone", 6, image=True, seed=77, prompt="a seeded one"))
    alone.run()
    reference = alone.result("short-alone")

    rig = rig_factory(model)
    rig.enqueue(job(rig, "long", 120))
    rig.start()
    wait_for(lambda: rig.running_tokens("long") >= 8, "the long row to decode")
    rig.enqueue(job(rig, "short", 6, image=True, seed=77, prompt="a seeded one"))
    rig.join()

    long, short = rig.job("long"), rig.job("short")
    assert long.get_status() == short.get_status() == JobStatus.FINISHED
    assert short.ended_at is not None and long.ended_at is not None and short.ended_at < long.ended_at
    assert long.started_at is not None and short.started_at is not None and short.started_at > long.started_at
    got = rig.result("short")
    assert got.micro_batch_id != rig.result("long").micro_batch_id, "the short job did not join mid-flight"
    assert (got.text, got.completion_tokens, got.seed) == (reference.text, reference.completion_tokens, 77)
    assert rig.result("long").completion_tokens == 120
    assert StartedJobRegistry(queue=rig.queue).get_job_ids() == []
    assert rig.conn.llen(rig.queue.intermediate_queue_key) == 0


@pytest.mark.parametrize("model", MODELS)
def test_a_job_canceled_mid_flight_frees_its_slot_for_a_waiting_job(
    rig_factory: Callable[..., Rig], model: str
) -> None:
    rig = rig_factory(model, Limits(max_rows=1))
    rig.enqueue(job(rig, "victim", 200))
    rig.enqueue(job(rig, "next", 4, image=True))
    rig.start()
    wait_for(lambda: rig.running_tokens("victim") >= 4, "the victim to decode")
    assert rig.server.ce.running == 1 and rig.conn.zcard(StartedJobRegistry(queue=rig.queue).key) == 1
    asked = time.time()
    rig.conn.zadd(keys.CANCEL_REQUESTS, {"victim": asked})
    rig.join()
    canceled = rig.outcome("victim")
    assert (
        isinstance(canceled, JobError) and canceled.code == CANCELED and "while it was running" in canceled.message
    ), canceled
    victim, following = rig.job("victim"), rig.job("next")
    assert victim.ended_at is not None and following.started_at is not None
    assert victim.ended_at <= following.started_at
    assert victim.ended_at.timestamp() - asked < 1.0, "the cancel took more than a second"
    assert rig.result("next").completion_tokens == 4


@pytest.mark.parametrize("model", MODELS)
def test_the_kv_budget_is_never_exceeded(rig_factory: Callable[..., Rig], model: str) -> None:
    budget = 400
    rig = rig_factory(model, Limits(max_rows=6, max_kv_tokens=budget))
    for i in range(6):
        rig.enqueue(job(rig, f"row-{i}", 8 + 10 * i, image=i % 2 == 1))
    rig.run()
    assert [rig.result(f"row-{i}").completion_tokens for i in range(6)] == [8 + 10 * i for i in range(6)]
    assert max(load.kv_tokens for load in rig.loads) <= budget
    assert max(load.running for load in rig.loads) >= 2, "rows never shared the batch"
    assert rig.loads[-1] == Load(0, 6, 0)


def test_bad_rows_fail_alone_and_a_retried_job_runs_alone(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("demo")
    rig.enqueue(job(rig, "good-0", 6))
    rig.enqueue(job(rig, "retried", 6), attempts=1)
    rig.enqueue(job(rig, "good-1", 6, image=True))
    missing = job(rig, "missing-blob", 6)
    rig.enqueue(
        JobPayload(
            id=missing.id, messages=(Message("user", (ImagePart("0" * 64),)),), params=missing.params, created_at=1
        )
    )
    rig.queue.enqueue_call(func=keys.JOB_FUNC, args=(b"\x00 garbage",), job_id="garbage", failure_ttl=600)
    rig.run()
    assert rig.result("good-0").completion_tokens == rig.result("good-1").completion_tokens == 6
    assert isinstance(rig.outcome("missing-blob"), JobError) and isinstance(rig.outcome("garbage"), JobError)
    retried = rig.job("retried")
    assert rig.result("retried").micro_batch_size == 1
    for mate in ("good-0", "good-1"):
        other = rig.job(mate)
        assert other.ended_at is not None and retried.started_at is not None and retried.ended_at is not None
        assert other.started_at is not None
        # Never in the running batch together.
        assert other.ended_at <= retried.started_at or other.started_at >= retried.ended_at


def test_a_stop_request_finishes_running_rows_and_puts_waiting_jobs_back(rig_factory: Callable[..., Rig]) -> None:
    # Four slots but KV tokens for two rows: two jobs are pulled and wait, unadmitted.
    rig = rig_factory("llama", Limits(max_rows=4, max_kv_tokens=200))
    for i in range(4):
        rig.enqueue(job(rig, f"drain-{i}", 60))
    rig.start()
    wait_for(lambda: rig.server.ce.running == 2 and len(rig.server.ce.waiting) == 2, "two running, two waiting")
    rig.worker._stop_requested = True  # what SIGTERM's warm shutdown sets while busy
    rig.join()
    running = [i for i in range(4) if rig.job(f"drain-{i}").get_status() == JobStatus.FINISHED]
    assert len(running) == 2
    assert all(rig.result(f"drain-{i}").completion_tokens == 60 for i in running)
    assert rig.conn.llen(rig.queue.key) == 2 and rig.conn.llen(rig.queue.intermediate_queue_key) == 0
    assert StartedJobRegistry(queue=rig.queue).get_job_ids() == []


def test_a_decoding_step_that_raises_for_one_job_fails_only_that_job(rig_factory: Callable[..., Rig]) -> None:
    from tests.workers.continuous.test_step_faults import faulty_decode, poison_position

    alone = rig_factory("llama")
    alone.enqueue(job(alone, "ok-alone", 20, seed=5, prompt="an ordinary one"))
    alone.run()

    rig = rig_factory("llama")
    rig.enqueue(job(rig, "ok", 20, seed=5, prompt="an ordinary one"))
    rig.enqueue(job(rig, "poison", 20, prompt="word " * 120))  # its positions trip the fault
    with faulty_decode(rig.engine, poison_position) as raised:
        rig.run()
    assert raised
    failed = rig.outcome("poison")
    assert isinstance(failed, JobError) and failed.code == "generation_failed", failed
    assert "this request's decoding step alone" in failed.message
    assert (rig.result("ok").text, rig.result("ok").completion_tokens) == (
        alone.result("ok-alone").text,
        alone.result("ok-alone").completion_tokens,
    )
    rig.enqueue(job(rig, "after", 5))
    rig.run()
    assert rig.result("after").completion_tokens == 5
    assert StartedJobRegistry(queue=rig.queue).get_job_ids() == []
