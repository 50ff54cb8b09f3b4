"""The worker's probe endpoints over real HTTP, and the decoding loops' pulse they read."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

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
