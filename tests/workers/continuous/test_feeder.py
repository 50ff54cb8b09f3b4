"""The feeder thread: pulls happen off the decoding loop, nothing pulled is lost (a lost pull
reply, a stop with jobs pulled but not taken), and a dead feeder fails the worker's /livez."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.registry import StartedJobRegistry

from shared.queue.continuous import Feeder
from shared.serializer import MsgpackSerializer
from tests.workers.continuous import test_worker
from tests.workers.continuous.test_worker import Rig, job, wait_for
from workers.continuous.serving import continuous_worker
from workers.probes import ProbeState

# The worker rig and its fixtures (a continuous worker on a real Redis, in a thread).
engines, rig_factory = test_worker.engines, test_worker.rig_factory
PULLS = {"LMOVE", "BLMOVE", "RPOPLPUSH", "BRPOPLPUSH", "LPOP", "BLPOP"}


def test_decoding_steps_make_no_queue_round_trip(
    rig_factory: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = rig_factory("llama")
    # (thread name, command names) of each round trip made while a row is decoding
    calls: list[tuple[str, list[str]]] = []
    real_command, real_pipeline = Redis.execute_command, Pipeline.execute

    def note(names: list[str]) -> None:
        if rig.server.ce.batch is not None:
            calls.append((threading.current_thread().name, names))

    def command(self: Redis, *args: Any, **options: Any) -> Any:
        note([str(args[0]).upper()])
        return real_command(self, *args, **options)

    def pipeline(self: Pipeline, raise_on_error: bool = True) -> Any:
        note([str(c[0][0]).upper() for c in self.command_stack])
        return real_pipeline(self, raise_on_error)

    monkeypatch.setattr(Redis, "execute_command", command)
    monkeypatch.setattr(Pipeline, "execute", pipeline)
    rig.enqueue(job(rig, "lone", 80))
    rig.start()
    rig.thread.name = "step-loop"  # type: ignore[union-attr]
    wait_for(lambda: rig.running_tokens("lone") >= 5, "the first row to decode")
    rig.enqueue(job(rig, "second", 20))  # pulled by the feeder while "lone" decodes
    rig.join()
    assert rig.result("second").completion_tokens == 20
    monkeypatch.undo()
    assert rig.result("lone").completion_tokens == 80
    steps = rig.server.ce.steps
    on_loop = [names for thread, names in calls if thread == "step-loop"]
    assert not [names for names in on_loop if PULLS & set(names)], "the decoding loop pulled from the queue"
    assert any(PULLS & set(names) for thread, names in calls if thread == "feeder")
    # Its own round trips: the start, the finish and a few heartbeats; not one per step.
    assert len(on_loop) < steps // 4, (len(on_loop), steps)


class LosesOneReply(Redis):
    """A client whose first blocking pull moves the job in Redis and then loses the reply, as a
    connection that drops mid-reply does."""

    lost = 0

    def blmove(self, *args: Any, **kwargs: Any) -> Any:
        moved = super().blmove(*args, **kwargs)
        if moved is not None and not LosesOneReply.lost:
            LosesOneReply.lost += 1
            raise RedisConnectionError("Connection closed by server (injected, after the move)")
        return moved


def test_a_job_whose_pull_reply_was_lost_still_runs(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("llama")
    kwargs = rig.conn.connection_pool.connection_kwargs
    lossy = LosesOneReply(host=kwargs["host"], port=kwargs["port"], db=kwargs.get("db", 0))
    rig.worker = continuous_worker(
        [rig.queue.name],
        connection=rig.conn,
        feed_connection=lossy,
        server=rig.server,
        max_batch_size=rig.limits.max_rows,
        batch_timeout_ms=0,
        serializer=MsgpackSerializer,
    )
    rig.enqueue(job(rig, "lost-reply", 6))
    rig.run()
    assert LosesOneReply.lost == 1
    assert rig.result("lost-reply").completion_tokens == 6
    assert rig.conn.llen(rig.queue.intermediate_queue_key) == 0
    assert StartedJobRegistry(queue=rig.queue).get_job_ids() == []


def feeder_for(rig: Rig, credit: int) -> Feeder:
    return Feeder(rig.queue, rig.conn, rig.conn, MsgpackSerializer, credit=credit, stopping=lambda: False)


def test_jobs_pulled_but_not_taken_go_back_in_order_when_the_feeder_closes(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("llama")
    for i in range(3):
        rig.enqueue(job(rig, f"held-{i}", 4))
    feeder = feeder_for(rig, credit=2).start()  # two may be pulled; the third stays queued
    wait_for(lambda: len(feeder._ready) == 2, "the feeder to pull two jobs")
    assert rig.conn.llen(rig.queue.intermediate_queue_key) == 2
    feeder.close()
    assert [x.decode() for x in rig.conn.lrange(rig.queue.key, 0, -1)] == ["held-0", "held-1", "held-2"]
    assert rig.conn.llen(rig.queue.intermediate_queue_key) == 0


def test_a_dead_feeder_fails_livez(rig_factory: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch) -> None:
    rig = rig_factory("llama")
    feeder = feeder_for(rig, credit=1)
    probes = ProbeState(stall_s=180, stalled_s=feeder.stalled_s)
    assert probes.answer("/livez")[0] == 200

    def dies(_want: int) -> list[Any]:
        raise SystemExit("the feeder thread dies (injected)")

    monkeypatch.setattr(feeder, "_pull", dies)
    monkeypatch.setattr(threading, "excepthook", lambda _args: None)  # its traceback is expected
    feeder.start()
    feeder.thread.join(60)
    assert not feeder.thread.is_alive()
    assert probes.answer("/livez")[0] == 503


def test_an_idle_worker_runs_again_what_a_failover_left_in_flight(rig_factory: Callable[..., Rig]) -> None:
    """The promoted replica can show a job pulled (intermediate list) and one started under this
    worker's name whose finishes it never got, while the worker, which rode out the failover, holds
    neither. Nothing else would run them (the janitor leaves a live worker's jobs alone): the
    worker's idle wait puts them back, without a restart of its loop."""
    rig = rig_factory("llama")
    for job_id in ("pulled", "started"):
        rig.enqueue(job(rig, job_id, 3))
    assert rig.conn.lpop(rig.queue.key) == b"pulled" and rig.conn.lpop(rig.queue.key) == b"started"
    rig.conn.rpush(rig.queue.intermediate_queue_key, "pulled", "started")
    with rig.conn.pipeline() as pipe:
        rig.worker._start_commands([rig.job("started")], rig.queue, pipe)
        pipe.execute()
    rig.conn.delete(rig.worker.key)  # its start wrote the worker's record; the worker now starts afresh
    assert rig.conn.lrange(rig.queue.intermediate_queue_key, 0, -1) == [b"pulled"]
    rig.run()
    assert rig.result("pulled").completion_tokens == 3
    assert rig.result("started").completion_tokens == 3
    assert rig.conn.llen(rig.queue.intermediate_queue_key) == 0
    registry = StartedJobRegistry(rig.queue.name, connection=rig.conn, serializer=MsgpackSerializer)
    assert registry.get_job_ids() == []


def test_a_job_put_on_the_queue_again_while_held_runs_once_and_fails_no_batch_mate(
    rig_factory: Callable[..., Rig],
) -> None:
    """A recovery path can queue a job this worker already holds (the janitor's requeue when a
    starved worker's heartbeat lapsed; an adoption after a lost pull reply). Seen under load: the
    copy became a second row, and when one of the two ended the other's bookkeeping raised and
    failed every running row. The copy is dropped; the job and its batch mates run once."""
    rig = rig_factory("llama")
    rig.enqueue(job(rig, "twice", 24))
    rig.enqueue(job(rig, "mate", 96))  # still decoding when either copy of "twice" would end
    rig.start()
    wait_for(lambda: rig.running_tokens("twice") > 0, "the job to run")
    rig.conn.rpush(rig.queue.key, "twice")  # the same id queued again while this worker holds it
    rig.join()
    assert rig.result("twice").completion_tokens == 24
    assert rig.result("mate").completion_tokens == 96
    assert rig.conn.llen(rig.queue.intermediate_queue_key) == 0
    assert rig.conn.llen(rig.queue.key) == 0
    assert StartedJobRegistry(queue=rig.queue).get_job_ids() == []
