"""Fleet operations with real processes (issue 13): an API that accepts work before any worker
exists, workers named by WORKER_NAME with their own probe endpoints, and the queue of a killed
worker retired from rq's queue set while the others serve its jobs."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from shared import keys
from shared.queue import names
from tests.support.jobs import final_job, submit_job
from tests.support.procs import RedisServer, ServiceProcess, answers, free_port, service_env, wait_for

STALL = "STALL-HERE"
RETIRE_S = 3.0
JANITOR_S = 0.3


class Fleet:
    """Redis and an API; workers are added by the tests, each under its own WORKER_NAME."""

    def __init__(self, demo_model_dir: Path) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="omega-fleetops-"))
        self.redis_server = RedisServer(free_port(), self.workdir / "redis").start()
        port = free_port()
        self.env = {
            "REDIS_URL": self.redis_server.url(),
            "MODEL_PATH": str(demo_model_dir),
            "DATA_DIR": str(self.workdir),
            "BLOB_DIR": str(self.workdir / "blobs"),
            "WORKER_HEARTBEAT_S": "0.4",
            "WORKER_TTL_S": "2",
            "JANITOR_INTERVAL_S": str(JANITOR_S),
            "DEAD_QUEUE_RETIRE_S": str(RETIRE_S),
            "WORKER_STALL_S": "1.5",
            "FAULT_STALL_MARKER": STALL,
            "PORT": str(port),
        }
        self.url = f"http://127.0.0.1:{port}"
        self.api = ServiceProcess(["api"], service_env(self.env), self.workdir / "api.log").start()
        self.workers: dict[str, tuple[ServiceProcess, int]] = {}
        wait_for(lambda: answers(self.url), 60, "the API")

    def start_worker(self, name: str) -> str:
        """A CPU worker named `name`; returns its probe base URL."""
        probe_port = free_port()
        env = service_env({**self.env, "WORKER_NAME": name, "WORKER_PROBE_PORT": str(probe_port)})
        argv = ["worker", "--device", "cpu", "--worker-index", "0", "--cpu-threads", "1"]
        proc = ServiceProcess(argv, env, self.workdir / f"worker-{name}.log").start()
        self.workers[name] = (proc, probe_port)
        return f"http://127.0.0.1:{probe_port}"

    def redis(self) -> Redis:
        return self.redis_server.client()

    def submit(self, body: dict[str, Any]) -> str:
        return submit_job(self.url, body)

    def final(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        return final_job(self.url, job_id, timeout)

    def stop(self) -> None:
        self.api.stop()
        for proc, _ in self.workers.values():
            proc.stop()
        self.redis_server.stop()


def probe(base: str, path: str) -> int | None:
    """The probe's status, or None while nothing listens yet."""
    try:
        return httpx.get(f"{base}{path}", timeout=2).status_code
    except httpx.HTTPError:
        return None


def statuses_until(base: str, path: str, done: Callable[[int | None], bool], timeout: float) -> list[int | None]:
    """Every status seen, polling until `done` holds for one."""
    seen: list[int | None] = []
    deadline = time.monotonic() + timeout
    while not seen or not done(seen[-1]):
        assert time.monotonic() < deadline, f"{path}: {seen[-5:]}"
        seen.append(probe(base, path))
        time.sleep(0.05)
    return seen


def job(i: int, tokens: int = 32, text: str = "") -> dict[str, Any]:
    content = text or f"job {i}"
    return {"messages": [{"role": "user", "content": content}], "max_tokens": tokens, "min_tokens": tokens, "seed": i}


@pytest.fixture(scope="module")
def fleet(demo_model_dir: Path) -> Iterator[Fleet]:
    f = Fleet(demo_model_dir)
    yield f
    f.stop()


def test_jobs_accepted_before_any_worker_run_once_one_starts_and_probes_follow_it(fleet: Fleet) -> None:
    held = [fleet.submit(job(i, tokens=4)) for i in range(3)]  # no worker yet: accepted, held
    alpha = fleet.start_worker("alpha")
    startup = statuses_until(alpha, "/startup", lambda s: s == 200, 120)
    assert 503 in startup, f"/startup never said 'still loading': {startup}"
    assert probe(alpha, "/readyz") == 200 and probe(alpha, "/livez") == 200
    assert [fleet.final(j)["status"] for j in held] == ["succeeded"] * 3
    assert fleet.redis().sismember(names.QUEUES, names.queue_key(keys.worker_queue("alpha-cpu0")))


def test_livez_fails_while_decoding_is_stalled_and_recovers(fleet: Fleet) -> None:
    alpha = f"http://127.0.0.1:{fleet.workers['alpha'][1]}"
    assert probe(alpha, "/livez") == 200  # idle for long: alive
    stalled = fleet.submit(job(50, tokens=2, text=f"please {STALL}"))
    seen = statuses_until(alpha, "/livez", lambda s: s == 503, 30)  # past WORKER_STALL_S
    statuses_until(alpha, "/livez", lambda s: s == 200, 30)  # the loop moves again
    assert fleet.final(stalled)["status"] == "succeeded", seen


def test_a_killed_workers_queue_is_retired_and_its_jobs_served_by_the_others(fleet: Fleet) -> None:
    beta = fleet.start_worker("beta")
    statuses_until(beta, "/readyz", lambda s: s == 200, 120)
    redis = fleet.redis()
    beta_queue = keys.worker_queue("beta-cpu0")
    wait_for(lambda: "beta-cpu0" in httpx.get(f"{fleet.url}/health").text, 10, "beta in the fleet view")
    # Long enough to be seen running: the continuous worker starts a row at admission and
    # finishes it at its end, and a 32-token row on an idle worker can come and go between polls.
    ids = [fleet.submit(job(100 + i, tokens=160)) for i in range(12)]
    wait_for(lambda: redis.zcard(names.started_key(beta_queue)) > 0, 60, "beta running jobs", interval=0.02)
    proc, _ = fleet.workers["beta"]
    assert proc.process is not None
    os.kill(proc.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: not redis.sismember(names.QUEUES, names.queue_key(beta_queue)), 30, "beta's queue retired")
    took = time.monotonic() - killed
    # Retired within DEAD_QUEUE_RETIRE_S plus a janitor interval (and a second for this shared CPU).
    assert took <= RETIRE_S + JANITOR_S + 1.0, f"retired after {took:.2f} s"
    outcomes = [fleet.final(i) for i in ids]
    assert [o["status"] for o in outcomes] == ["succeeded"] * 12
    assert not redis.exists(names.started_key(beta_queue), names.queue_key(beta_queue))
    assert beta_queue not in httpx.get(f"{fleet.url}/metrics").text
    assert "beta" not in httpx.get(f"{fleet.url}/health").text


def test_a_draining_worker_is_started_but_not_ready(fleet: Fleet) -> None:
    proc, port = fleet.workers["alpha"]
    assert proc.process is not None
    proc.signal(signal.SIGUSR1)  # Kubernetes' preStop
    alpha = f"http://127.0.0.1:{port}"
    statuses_until(alpha, "/readyz", lambda s: s == 503, 10)
    assert probe(alpha, "/startup") == 200 and probe(alpha, "/livez") == 200
