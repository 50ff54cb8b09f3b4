"""Redis HA: the primary is SIGKILLed while jobs are being submitted through Sentinel. Every job
that got a 2xx finishes `succeeded` (submissions during the failover may get 503 + Retry-After).

The primary dies behind lagging replicas (stopped for REPLICA_LAG_S first), as it would under
load: the promoted replica then shows jobs the worker had pulled or started but not their
finish, while the worker, which rides out the failover without restarting its loop, already
ran them. They must run again (QueueWorker.reconcile), or they would wait forever."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.procs import ServiceProcess, free_port, service_env, wait_for, wait_ready
from tests.support.sentinel import MASTER, SentinelCluster, start_sentinel_cluster

# Part of `make test`; `make test-failover` runs it alone.
pytestmark = pytest.mark.failover

SUBMITTERS = 4
# Under the sentinels' down-after-milliseconds (tests/support/sentinel.py), so the stopped
# replicas are not judged down themselves.
REPLICA_LAG_S = 0.5


def job_body(i: int) -> dict[str, object]:
    # Long enough that jobs are running when the replicas stop: their finishes are in the lost
    # tail (with 2 tokens the failover rarely caught one; 16 stranded jobs in 1 run of 3 before
    # QueueWorker.reconcile).
    return {"messages": [{"role": "user", "content": f"job {i}"}], "max_tokens": 16, "temperature": 0}


class SentinelFleet:
    """An API and one CPU worker process that know Redis only through the sentinels."""

    def __init__(self, demo_model_dir: Path, cluster: SentinelCluster) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="omega-sentinel-fleet-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = service_env(
            {
                # The host is never used: the sentinels name the primary; the URL names the database.
                "REDIS_URL": "redis://unused.invalid:6379/0",
                "REDIS_SENTINELS": cluster.sentinels,
                "REDIS_SENTINEL_MASTER": MASTER,
                "MODEL_PATH": str(demo_model_dir),
                "DATA_DIR": str(self.workdir),
                "BLOB_DIR": str(self.workdir / "blobs"),
                "WORKER_HEARTBEAT_S": "0.4",
                "WORKER_TTL_S": "3",
                "JANITOR_INTERVAL_S": "0.5",
                "MAX_BATCH_SIZE": "8",
                "PORT": str(self.port),
            }
        )
        args = ["worker", "--device", "cpu", "--worker-index", "0", "--cpu-threads", "1"]
        self.worker = ServiceProcess(args, env, self.workdir / "worker.log").start()
        self.api = ServiceProcess(["api"], env, self.workdir / "api.log").start()
        wait_ready(self.url, timeout=120, procs=[self.worker, self.api])

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-4000:]}" for p in (self.worker, self.api))

    def stop(self) -> None:
        self.api.stop()
        self.worker.stop()


@pytest.fixture
def cluster() -> Iterator[SentinelCluster]:
    # Two replicas: after the failover one is left to confirm new jobs (REDIS_WAIT_REPLICAS=1).
    cluster = start_sentinel_cluster(replicas=2)
    yield cluster
    cluster.stop()


def test_no_acknowledged_job_is_lost_when_the_primary_dies(demo_model_dir: Path, cluster: SentinelCluster) -> None:
    fleet = SentinelFleet(demo_model_dir, cluster)
    accepted: list[str] = []
    statuses: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def submitter(first: int) -> None:
        with httpx.Client(base_url=fleet.url, timeout=30) as client:
            i = first
            while not stop.is_set():
                try:
                    r = client.post("/v1/jobs", json=job_body(i))
                except httpx.HTTPError:
                    r = None
                with lock:
                    statuses.append(r.status_code if r is not None else 0)
                    if r is not None and r.is_success:
                        accepted.append(r.json()["id"])
                i += SUBMITTERS
                if r is not None and r.status_code == 503:
                    time.sleep(float(r.headers.get("Retry-After", "1")) / 4)  # retry soon, as clients would

    try:
        with ThreadPoolExecutor(SUBMITTERS) as pool:
            for k in range(SUBMITTERS):
                pool.submit(submitter, k)
            try:
                # Early, while the worker has jobs in hand: a couple of submissions each.
                wait_for(lambda: len(accepted) >= 2 * SUBMITTERS, 60, "jobs accepted", interval=0.01)
                before = len(accepted)
                old = cluster.kill_primary(replica_lag_s=REPLICA_LAG_S)
                cluster.wait_failover(old)
                # Keep submitting until the new primary has taken some jobs too.
                wait_for(lambda: len(accepted) > before + 10, 60, "jobs accepted after the failover", interval=0.2)
            finally:
                stop.set()
        unexpected = sorted({s for s in statuses if not (200 <= s < 300 or s == 503)})
        assert not unexpected, f"statuses other than 2xx/503: {unexpected}\n{fleet.logs()}"
        assert before > 0, fleet.logs()

        pending = set(accepted)

        def all_succeeded() -> bool:
            with httpx.Client(base_url=fleet.url, timeout=30) as client:
                for job_id in sorted(pending):
                    r = client.get(f"/v1/jobs/{job_id}")
                    if r.status_code == 200 and r.json()["status"] == "succeeded":
                        pending.discard(job_id)
                    elif r.status_code == 200 and r.json()["status"] in ("failed", "canceled", "expired"):
                        raise AssertionError(f"job {job_id} ended {r.json()['status']}: {r.text}")
                    else:
                        assert r.status_code in (200, 503), r.text  # 404 would be a lost job
            return not pending

        wait_for(all_succeeded, 180, f"every acknowledged job succeeded (left: {pending})", interval=1)
        refused = statuses.count(503)
        print(f"\nsentinel failover: {len(accepted)} jobs got 2xx ({before} before the kill), {refused} got 503")
    except BaseException:
        print(fleet.logs())
        raise
    finally:
        fleet.stop()
