"""Faults with real processes: killed workers, a poison request, SIGTERM, a Redis restart, a dead
blob store. Nothing accepted is lost: every job ends final, and the ones that can succeed do."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from rq.job import Job

from shared import keys
from shared.fleet import WorkerInfo, decode_info
from shared.queue import names
from shared.queue.pause import pause_pulls as suspend
from shared.queue.pause import resume_pulls as resume
from shared.serializer import MsgpackSerializer
from tests.support.assertions import assert_openai_error
from tests.support.images import data_url, image_bytes
from tests.support.jobs import final_job, submit_job
from tests.support.procs import RedisServer, ServiceProcess, answers, free_port, service_env, wait_for, wait_ready

POISON = "POISON-PILL"


class Fleet:
    def __init__(self, demo_model_dir: Path) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="omega-fleet-"))
        self.redis_server = RedisServer(free_port(), self.workdir / "redis").start()
        self.port = free_port()
        self.env = {
            "REDIS_URL": self.redis_server.url(),
            "MODEL_PATH": str(demo_model_dir),
            "DATA_DIR": str(self.workdir),
            "BLOB_DIR": str(self.workdir / "blobs"),
            "CPU_WORKERS": "2",
            "WORKER_HEARTBEAT_S": "0.4",
            "WORKER_TTL_S": "2",
            "JANITOR_INTERVAL_S": "0.3",
            "MAX_JOB_ATTEMPTS": "2",
            "MAX_BATCH_SIZE": "8",
            "FAULT_KILL_MARKER": POISON,
            "PORT": str(self.port),
            "REQUEST_TIMEOUT_S": "120",
            "WORKER_PROBE_PORT": "0",
        }
        # `omega-vlm worker` without --device supervises one process per CPU worker and restarts
        # any that dies, as `omega-vlm up` does.
        self.workers = ServiceProcess(["worker"], service_env(self.env), self.workdir / "workers.log").start()
        self.api = ServiceProcess(["api"], service_env(self.env), self.workdir / "api.log").start()
        self.url = f"http://127.0.0.1:{self.port}"
        wait_ready(self.url, timeout=120, workers=2, procs=[self.workers, self.api])

    def redis(self) -> Redis:
        return self.redis_server.client()

    def live(self) -> list[WorkerInfo]:
        r = self.redis()
        ids = [i.decode() for i in r.zrangebyscore(keys.WORKERS, time.time() - 2, "+inf")]
        infos = [decode_info(raw) for raw in r.mget([keys.worker_info(i) for i in ids]) if raw] if ids else []
        return [w for w in infos if w is not None and w.ready]

    def wait_two_workers(self) -> None:
        wait_for(lambda: len(self.live()) == 2, 90, "two live workers", interval=0.3)

    def busy_worker(self, timeout: float = 30) -> WorkerInfo:
        """A live worker with jobs in flight right now."""
        found: list[WorkerInfo] = []

        def check() -> bool:
            r = self.redis()
            found[:] = [w for w in self.live() if r.zcard(names.started_key(w.queue)) > 0]
            return bool(found)

        wait_for(check, timeout, "a worker with jobs in flight", interval=0.01)
        return found[0]

    def submit(self, body: dict[str, Any]) -> str:
        return submit_job(self.url, body)

    def final(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        return final_job(self.url, job_id, timeout)

    def stop(self) -> None:
        self.api.stop()
        self.workers.stop()
        self.redis_server.stop()


def long_job(i: int, tokens: int = 48) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": f"job {i}"}],
        "max_tokens": tokens,
        "min_tokens": tokens,
        "seed": i,
    }


@pytest.fixture(scope="module")
def fleet(demo_model_dir: Path) -> Iterator[Fleet]:
    f = Fleet(demo_model_dir)
    yield f
    f.stop()


def test_sigkill_mid_batch_loses_nothing(fleet: Fleet) -> None:
    with ThreadPoolExecutor(8) as pool:
        # Long enough that rows are still running once the last submit returns, on a busy machine
        # where submits are slow and the continuous workers quick.
        ids = list(pool.map(lambda i: fleet.submit(long_job(i, tokens=200)), range(40)))
    victim = fleet.busy_worker()
    os.kill(victim.pid, signal.SIGKILL)
    outcomes = [fleet.final(job_id) for job_id in ids]
    assert [o["status"] for o in outcomes] == ["succeeded"] * 40, [o.get("error") for o in outcomes]
    redis = fleet.redis()
    retried = [i for i in ids if Job.fetch(i, connection=redis, serializer=MsgpackSerializer).meta.get("attempts")]
    assert retried, "no job was running on the killed worker"
    fleet.wait_two_workers()  # the supervisor restarted it


def test_the_only_worker_of_a_queue_dies_its_waiting_jobs_finish_elsewhere(fleet: Fleet) -> None:
    victim = fleet.live()[0]
    redis = fleet.redis()
    os.kill(victim.pid, signal.SIGSTOP)  # frozen: still counted live until its heartbeat ages out
    ids: list[str] = []
    routed = 0  # jobs the API put on the frozen worker's queue (read as each is accepted: on a
    # busy machine the janitor may already have moved them on by the time the last is sent)
    try:
        while len(ids) < 10 or (not routed and len(ids) < 40):
            ids.append(fleet.submit(long_job(100 + len(ids), tokens=8)))
            routed += redis.hget(names.job_key(ids[-1]), "origin") == victim.queue.encode()
        assert routed, "nothing was routed to the frozen worker"
    finally:
        os.kill(victim.pid, signal.SIGKILL)
    outcomes = [fleet.final(job_id) for job_id in ids]
    assert [o["status"] for o in outcomes] == ["succeeded"] * len(ids)
    fleet.wait_two_workers()


def test_a_poison_job_fails_after_its_attempts_and_its_batch_mates_succeed(fleet: Fleet) -> None:
    redis = fleet.redis()
    suspend(redis)  # let the poison job and its batch-mates queue up together
    time.sleep(1.5)
    try:
        poison = fleet.submit({"messages": [{"role": "user", "content": f"please {POISON} now"}], "max_tokens": 4})
        mates = [fleet.submit(long_job(200 + i, tokens=6)) for i in range(6)]
    finally:
        resume(redis)
    poisoned = fleet.final(poison, timeout=180)
    assert poisoned["status"] == "failed"
    assert poisoned["error"]["code"] == "worker_crashed" and "2 times" in poisoned["error"]["message"]
    assert [fleet.final(m)["status"] for m in mates] == ["succeeded"] * 6
    fleet.wait_two_workers()
    assert httpx.post(f"{fleet.url}/v1/chat/completions", json=long_job(300, 4), timeout=60).status_code == 200


def test_sigterm_finishes_the_batch_then_exits(fleet: Fleet) -> None:
    ids = [fleet.submit(long_job(400 + i, tokens=160)) for i in range(6)]
    victim = fleet.busy_worker()
    redis = fleet.redis()
    in_flight = [j.split(":")[0] for j in redis.zrange(names.started_key(victim.queue), 0, -1) for j in [j.decode()]]
    os.kill(victim.pid, signal.SIGTERM)
    wait_for(
        lambda: not Path(f"/proc/{victim.pid}").exists() or "zombie" in Path(f"/proc/{victim.pid}/status").read_text(),
        60,
        "the worker to exit",
    )
    outcomes = {i: fleet.final(i) for i in ids}
    assert all(o["status"] == "succeeded" for o in outcomes.values())
    for job_id in in_flight:  # finished by the worker that got SIGTERM, not run again elsewhere
        job = Job.fetch(job_id, connection=redis, serializer=MsgpackSerializer)
        assert job.worker_name == victim.rq_name and not job.meta.get("attempts")
    fleet.wait_two_workers()


def test_drain_signal_stops_routing_to_a_worker(fleet: Fleet) -> None:
    fleet.wait_two_workers()
    victim, other = fleet.live()
    os.kill(victim.pid, signal.SIGUSR1)  # what Kubernetes' preStop hook sends
    wait_for(
        lambda: any(
            w["id"] == victim.id and w["state"] == "stopping"
            for w in httpx.get(f"{fleet.url}/health").json()["workers"]
        ),
        10,
        "the worker to drain",
    )
    time.sleep(0.6)  # the API's fleet view is cached for half a second
    ids = [fleet.submit(long_job(450 + i, tokens=4)) for i in range(6)]
    assert all(fleet.final(i)["status"] == "succeeded" for i in ids)
    redis = fleet.redis()
    assert {Job.fetch(i, connection=redis, serializer=MsgpackSerializer).origin for i in ids} == {other.queue}
    os.kill(victim.pid, signal.SIGTERM)
    fleet.wait_two_workers()


def test_redis_restart(fleet: Fleet) -> None:
    redis = fleet.redis()
    suspend(redis)
    time.sleep(1.5)
    accepted = [fleet.submit(long_job(500 + i, tokens=6)) for i in range(5)]
    sync_result: dict[str, Any] = {}

    def sync_request() -> None:
        r = httpx.post(f"{fleet.url}/v1/chat/completions", json=long_job(600, 6), timeout=120)
        sync_result.update(status=r.status_code, body=r.json())

    waiting = threading.Thread(target=sync_request)
    waiting.start()
    time.sleep(0.5)
    fleet.redis_server.stop()  # SIGTERM: Redis writes its append-only file and exits
    try:
        started = time.monotonic()
        down = httpx.post(f"{fleet.url}/v1/chat/completions", json=long_job(700, 4), timeout=30)
        assert time.monotonic() - started < 3, "the API hung while Redis was down"
        error = assert_openai_error(down, 503)
        assert error["code"] == "queue_unavailable" and int(down.headers["Retry-After"]) >= 1
        assert httpx.get(f"{fleet.url}/readyz", timeout=10).status_code == 503
        assert httpx.get(f"{fleet.url}/health", timeout=10).json()["redis"] == "unavailable"
        assert_openai_error(httpx.post(f"{fleet.url}/v1/jobs", json=long_job(701, 4), timeout=30), 503)
    finally:
        fleet.redis_server.start()
    resume(fleet.redis())
    wait_ready(fleet.url, timeout=60, workers=2)
    # Connections pooled before the restart are stale: none of that may reach a client.
    with ThreadPoolExecutor(16) as pool:
        after = list(pool.map(lambda i: fleet.submit(long_job(800 + i, tokens=2)), range(32)))
    assert [fleet.final(j)["status"] for j in accepted + after] == ["succeeded"] * 37
    waiting.join(120)
    assert sync_result.get("status") == 200, sync_result


def test_blob_store_down_is_a_clear_503(fleet: Fleet) -> None:
    port = free_port()
    env = service_env(
        {
            **fleet.env,
            "PORT": str(port),
            "BLOB_STORE": "s3",
            "S3_BUCKET": "nope",
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
            "S3_ACCESS_KEY_ID": "x",
            "S3_SECRET_ACCESS_KEY": "y",
        }
    )
    api = ServiceProcess(["api"], env, fleet.workdir / "api-no-blobs.log").start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(url), 60, "the API")
        body = {"messages": [{"role": "user", "content": [{"type": "image", "image": data_url(image_bytes())}]}]}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert assert_openai_error(r, 503)["type"] == "service_unavailable_error"
        assert "Retry-After" in r.headers
        assert httpx.get(f"{url}/readyz").json()["blob_store"] == "unavailable"
    finally:
        api.stop()


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        named = line.startswith((name + "{", name + " "))
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_show_the_fleet_and_move_under_load(fleet: Fleet) -> None:
    fleet.wait_two_workers()
    before = httpx.get(f"{fleet.url}/metrics").text
    redis = fleet.redis()
    suspend(redis)
    time.sleep(1.5)
    try:
        # Each worker may take one job before it sees the pause: 8 submitted, at least 6 wait.
        ids = [fleet.submit(long_job(800 + i, tokens=6)) for i in range(8)]
        time.sleep(1.2)
        loaded = httpx.get(f"{fleet.url}/metrics").text
    finally:
        resume(redis)
    for job_id in ids:
        fleet.final(job_id)
    time.sleep(1)  # one heartbeat: the workers publish their metrics
    after = httpx.get(f"{fleet.url}/metrics").text
    assert metric(loaded, "omega_queue_waiting_jobs") >= 6
    assert metric(loaded, "omega_queue_oldest_job_age_seconds") >= 1.0
    assert metric(after, "omega_queue_waiting_jobs") == 0
    requests = "omega_api_request_duration_seconds_count"
    assert metric(after, requests, path="/v1/jobs") > metric(before, requests, path="/v1/jobs")
    assert metric(after, "omega_worker_batch_size_count") > metric(before, "omega_worker_batch_size_count")
    tokens = "omega_worker_generated_tokens_total"
    assert metric(after, tokens) >= metric(before, tokens) + 8 * 6
    assert 'worker="' in after and "omega_worker_time_to_first_token_seconds_bucket" in after
    assert metric(after, "omega_workers", state="ready") == 2
    assert "# TYPE omega_worker_batch_size histogram" in after and after.count("# TYPE omega_worker_batch_size ") == 1
    # The continuous engine's load, per worker, in /health and the metrics (idle again: all slots free).
    workers = httpx.get(f"{fleet.url}/health").json()["workers"]
    assert {(w["engine"], w["running"], w["free_slots"], w["kv_tokens"]) for w in workers} == {("continuous", 0, 8, 0)}
    assert "omega_worker_running_rows" in after and "omega_worker_kv_tokens" in after
