"""Running the real service for benchmarks: a private Redis, worker processes and the API."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.support.procs import RedisServer, ServiceProcess, free_port, service_env, wait_ready

COMPUTE_THREADS = 1


class BenchService:
    """redis-server + `omega-vlm worker --device cpu` + `omega-vlm api`, on the demo model."""

    def __init__(self, demo_model: Path, workdir: Path | None = None, **settings: str) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="omega-bench-"))
        self.redis = RedisServer(free_port(), self.workdir / "redis", appendonly=False).start()
        self.port = free_port()
        self.env = {
            "REDIS_URL": self.redis.url(),
            "MODEL_PATH": str(demo_model),
            "DATA_DIR": str(self.workdir),
            "BLOB_DIR": str(self.workdir / "blobs"),
            "PORT": str(self.port),
            "LOG_LEVEL": "warning",
            "REQUEST_TIMEOUT_S": "600",
            "MAX_QUEUE_SIZE": "100000",
            **settings,
        }
        self.url = f"http://127.0.0.1:{self.port}"
        self.worker: ServiceProcess | None = None
        self.api = ServiceProcess(["api"], service_env(self.env), self.workdir / "api.log").start()

    def start_worker(self, **settings: str) -> None:
        """(Re)start the one CPU worker with these settings (e.g. another MAX_BATCH_SIZE); a running
        worker that already has exactly these settings is kept (a start costs seconds of CPU)."""
        # One torch thread, as the in-process reference it is compared with: one core computes
        # (a GPU's role), the other serves the clients, the API and Redis.
        env = service_env({**self.env, **settings})
        args = ["worker", "--device", "cpu", "--cpu-threads", str(COMPUTE_THREADS)]
        if self.worker is not None and self.worker.alive() and (self.worker.args, self.worker.env) == (args, env):
            return
        if self.worker is not None:
            self.worker.stop()
        self.worker = ServiceProcess(args, env, self.workdir / "worker.log").start()
        wait_ready(self.url, timeout=180, workers=1, procs=[self.worker, self.api])

    def stop(self) -> None:
        for proc in (self.api, self.worker):
            if proc is not None:
                proc.stop()
        self.redis.stop()
