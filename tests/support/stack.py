"""Running service stacks for tests: worker processes and API processes over real HTTP.

Each named stack gets its own Redis database, so fleets and queues of different stacks never
mix, while sharing one redis-server, one S3 server and one demo model.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.images import ALLOW_NETWORK
from tests.support.procs import RedisServer, ServiceProcess, free_port, service_env, wait_ready


@dataclass
class Stack:
    name: str
    redis_url: str
    redis_db: int
    env: dict[str, str]
    workdir: Path
    workers: list[ServiceProcess] = field(default_factory=list)
    apis: dict[str, ServiceProcess] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.urls["main"]

    def client(self, api: str = "main", **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.urls[api], timeout=kwargs.pop("timeout", 60), **kwargs)  # type: ignore[arg-type]

    def start_api(self, name: str, **overrides: str) -> str:
        """Another API process on the same fleet, with different API settings."""
        port = free_port()
        env = service_env({**self.env, "PORT": str(port), **overrides})
        proc = ServiceProcess(["api"], env, self.workdir / f"api-{name}.log").start()
        self.apis[name] = proc
        self.urls[name] = f"http://127.0.0.1:{port}"
        wait_ready(self.urls[name], workers=len(self.workers), procs=[proc, *self.workers])
        return self.urls[name]

    def stop_api(self, name: str) -> None:
        self.apis.pop(name).stop()
        self.urls.pop(name)

    def start_worker(self, index: int, **overrides: str) -> ServiceProcess:
        env = service_env({**self.env, **overrides})
        proc = ServiceProcess(
            ["worker", "--device", "cpu", "--worker-index", str(index), "--cpu-threads", "1"],
            env,
            self.workdir / f"worker-{index}.log",
        ).start()
        self.workers.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-3000:]}" for p in [*self.workers, *self.apis.values()])

    def stop(self) -> None:
        for proc in [*self.apis.values(), *self.workers]:
            proc.stop()


class StackFactory:
    def __init__(self, redis: RedisServer, s3_endpoint: str, demo_model: Path) -> None:
        self.redis = redis
        self.s3_endpoint = s3_endpoint
        self.demo_model = demo_model
        self.stacks: dict[str, Stack] = {}
        self._next_db = 0

    def base_env(self, db: int, workdir: Path) -> dict[str, str]:
        return {
            "REDIS_URL": self.redis.url(db),
            "MODEL_PATH": str(self.demo_model),
            "DATA_DIR": str(workdir),
            "BLOB_STORE": "s3",
            "S3_BUCKET": "omega-test",
            "S3_ENDPOINT_URL": self.s3_endpoint,
            "S3_PREFIX": f"db{db}/",
            "S3_ACCESS_KEY_ID": "test",
            "S3_SECRET_ACCESS_KEY": "test",
            "IMAGE_FETCH_ALLOW_NETWORKS": ALLOW_NETWORK,
            "WORKER_HEARTBEAT_S": "0.5",
            "WORKER_TTL_S": "3",
            "REQUEST_TIMEOUT_S": "60",
            "LOG_LEVEL": "info",
            "WORKER_PROBE_PORT": "0",  # many workers on one host: no fixed port each
        }

    def get(self, name: str, workers: int = 1, **overrides: str) -> Stack:
        """Start (once) a stack with `workers` CPU workers and one open API named "main"."""
        if name in self.stacks:
            return self.stacks[name]
        db = self._next_db
        self._next_db += 1
        workdir = Path(tempfile.mkdtemp(prefix=f"omega-{name}-"))
        stack = Stack(name, self.redis.url(db), db, {**self.base_env(db, workdir), **overrides}, workdir)
        self.stacks[name] = stack
        for index in range(workers):
            stack.start_worker(index)
        stack.start_api("main")
        return stack

    def stop_all(self) -> None:
        for stack in self.stacks.values():
            stack.stop()
