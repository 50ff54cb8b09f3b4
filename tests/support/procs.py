"""Real processes for tests: redis-server, moto's S3 server, and the service's own commands."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from redis import Redis

from tests.support.zygote import ForkedProcess, shared_zygote

ROOT = Path(__file__).resolve().parents[2]


# Ports below Linux's ephemeral range (32768-60999), so no client socket's kernel-chosen port can take
# one between free_port() and the server's bind; each pytest-xdist worker draws from its own block, so
# parallel workers never hand out the same port. A random start keeps separate runs apart too.
_PORT_BLOCK = 1500
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % 8
_PORT_BASE = 20000 + _WORKER * _PORT_BLOCK
_next_port = random.randrange(_PORT_BLOCK)


def free_port() -> int:
    """A port no one listens on now, and that this process has not handed out before."""
    global _next_port
    for _ in range(_PORT_BLOCK):
        port = _PORT_BASE + _next_port % _PORT_BLOCK
        _next_port += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORT_BASE}-{_PORT_BASE + _PORT_BLOCK - 1}")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    appendonly: bool = True

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                # The AOF is written at every command (a killed redis-server restarts with it) but
                # never fsynced: a test measures the service, and a fsync behind a shared disk's
                # stall blocks every client of this Redis for as long (5 s timeouts seen).
                "--appendfsync",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_for(self.ping, 10, "redis-server")
        return self

    def ping(self) -> bool:
        try:
            return bool(Redis(port=self.port, socket_connect_timeout=0.2).ping())
        except Exception:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def client(self, db: int = 0) -> Redis:
        return Redis(port=self.port, db=db)


def start_redis() -> RedisServer:
    return RedisServer(free_port(), Path(tempfile.mkdtemp(prefix="omega-redis-"))).start()


@dataclass
class ServiceProcess:
    """One `omega-vlm` command (api or worker) with its own environment and log file."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | ForkedProcess | None = None
    _log: object = field(default=None, repr=False)

    def start(self) -> ServiceProcess:
        """Forked from the test zygote where it may be (tests/support/zygote.py), else exec'd."""
        zygote = shared_zygote(service_env({}))
        if zygote is not None and zygote.eligible(self.env):
            self.process = zygote.spawn(self.args, self.env, self.log_path, ROOT)
            return self
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "omega_vlm.cli", *self.args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def service_env(settings: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMEGA_", "API_KEY", "MODEL_"))}
    env.update({"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(settings)
    return env


def answers(url: str) -> bool:
    """The service at `url` answers its liveness probe."""
    try:
        return httpx.get(f"{url}/livez", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(base_url: str, timeout: float = 90, workers: int = 1, procs: list[ServiceProcess] | None = None) -> None:
    def ready() -> bool:
        for p in procs or []:
            if not p.alive():
                raise RuntimeError(f"process {p.args} died:\n{p.log()[-4000:]}")
        try:
            r = httpx.get(f"{base_url}/health", timeout=2)
            return r.status_code == 200 and r.json()["ready"] and len(r.json()["devices"]) >= workers
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout, f"{base_url} ready with {workers} worker(s)", interval=0.25)
