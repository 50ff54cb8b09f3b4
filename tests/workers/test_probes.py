"""The worker's probe endpoints over real HTTP, and the pulse they read: the decoding loops', and
the wait for the next job's."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rq.queue import Queue

from shared.queue.worker import MicroBatchWorker
from shared.serializer import MsgpackSerializer
from tests.support.procs import RedisServer, wait_for
from tests.support.queue import NeverRuns
from tests.workers.test_engine import job
from workers import progress
from workers.continuous.scheduler import ContinuousEngine
from workers.engine import Engine
from workers.probes import ProbeServer, ProbeState, check

ROOT = str(Path(__file__).resolve().parents[2])


@pytest.fixture
def probes() -> Iterator[tuple[ProbeState, str, int]]:
    state = ProbeState(stall_s=0.3)
    server = ProbeServer(state, "127.0.0.1", 0).start()
    yield state, f"http://127.0.0.1:{server.port}", server.port
    server.stop()
    progress.rest()


def status(base: str, path: str) -> int:
    return httpx.get(f"{base}{path}", timeout=5).status_code


def test_startup_and_readiness_follow_the_workers_state(probes: tuple[ProbeState, str, int]) -> None:
    state, base, port = probes
    assert (status(base, "/startup"), status(base, "/readyz")) == (503, 503)  # loading
    assert not check(port)
    state.set_state("ready")
    assert (status(base, "/startup"), status(base, "/readyz"), status(base, "/livez")) == (200, 200, 200)
    assert check(port)
    state.set_state("stopping")  # draining: started, alive, takes nothing new
    assert (status(base, "/startup"), status(base, "/readyz"), status(base, "/livez")) == (200, 503, 200)
    assert status(base, "/nope") == 404


def test_livez_fails_only_when_the_loop_has_work_and_does_not_advance(probes: tuple[ProbeState, str, int]) -> None:
    state, base, port = probes
    state.set_state("ready")
    progress.rest()
    time.sleep(0.4)
    assert status(base, "/livez") == 200  # idle for longer than WORKER_STALL_S: alive
    progress.beat()
    time.sleep(0.4)
    stalled = httpx.get(f"{base}/livez", timeout=5)
    assert stalled.status_code == 503 and stalled.json()["stalled_seconds"] >= 0.3
    assert not check(port)
    env = {**os.environ, "WORKER_PROBE_PORT": str(port), "PYTHONPATH": ROOT}
    healthcheck = [sys.executable, "-m", "workers.probes"]  # the image's and compose's HEALTHCHECK
    assert subprocess.run(healthcheck, env=env, timeout=30).returncode == 1
    progress.beat()  # the loop advanced
    assert status(base, "/livez") == 200
    progress.rest()  # and finished: idle stays alive however long the check takes to start
    assert subprocess.run(healthcheck, env=env, timeout=30).returncode == 0


def counted_beats(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    beats: list[float] = []
    real = progress.beat

    def beat() -> None:
        beats.append(time.monotonic())
        real()

    monkeypatch.setattr(progress, "beat", beat)
    return beats


def test_the_static_engine_beats_every_decoding_step_then_rests(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    beats = counted_beats(monkeypatch)
    out = engine.generate([engine.prepare(job("count", max_new_tokens=12, min_new_tokens=12), [])])[0]
    assert out.completion_tokens == 12
    assert len(beats) >= 12, "the decoding loop does not beat per step"
    assert progress.stalled_s() == 0.0  # done: idle


def test_the_continuous_engine_beats_every_step_then_rests(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    beats = counted_beats(monkeypatch)
    done: list[str] = []
    ce = ContinuousEngine(engine, lambda r, o: done.append(r.job.id), lambda r, e: None)
    ce.submit(engine.prepare(job("count", max_new_tokens=8, min_new_tokens=8), []))
    ce.run_until_idle()
    assert done and len(beats) >= ce.steps >= 7
    assert progress.stalled_s() == 0.0


class SilentRedis:
    """A TCP server that accepts connections and never answers: a Redis whose replies stopped
    coming (a peer gone without a reset). Closing it ends every connection it holds."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.held.append(self.listener.accept()[0])

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


def test_livez_fails_while_a_wait_for_jobs_does_not_return(
    probes: tuple[ProbeState, str, int], redis_server: RedisServer
) -> None:
    """The wait for the next job counts as work while one of its turns is out: a turn whose reply
    never comes (here: no socket timeout, as worker connections once had) fails /livez."""
    state, base, _ = probes
    state.set_state("ready")
    conn = redis_server.client(db=14)
    queue = Queue("omega.silent", connection=conn, serializer=MsgpackSerializer)
    worker = MicroBatchWorker(
        [queue], connection=conn, name="silent-worker", handler=NeverRuns(), max_batch_size=1, batch_timeout_ms=0
    )
    worker.on_wait = progress.waiting
    silent = SilentRedis()  # from now on the worker's Redis stops answering
    conn.connection_pool.connection_kwargs.update(port=silent.port, socket_timeout=None)
    conn.connection_pool.disconnect()
    waiting = threading.Thread(target=worker.dequeue_job_and_maintain_ttl, args=(1, 1), daemon=True)
    waiting.start()
    try:
        wait_for(lambda: status(base, "/livez") == 503, 30, "/livez to fail on the stuck wait")
    finally:
        silent.close()  # the turn ends with a connection error; max_idle_time ends the wait
    waiting.join(60)
    assert not waiting.is_alive()
    assert status(base, "/livez") == 200  # idle again
