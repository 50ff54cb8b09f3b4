"""A model no worker can load: restarts stop after WORKER_MAX_RESTARTS, requests get 503 at once
with the reason, and /health shows it (the review saw restarts forever and a 50 s hang)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.support.procs import RedisServer, ServiceProcess, free_port, service_env, wait_for

DB = 15  # the stack factory counts up from 0


def test_a_model_that_cannot_load_gets_503_at_once_with_the_reason(redis_server: RedisServer, tmp_path: Path) -> None:
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "no-such-architecture"}')  # passes preflight only
    redis_server.client(DB).flushdb()
    port = free_port()
    env = service_env(
        {
            "REDIS_URL": redis_server.url(DB),
            "MODEL_PATH": str(model),
            "DATA_DIR": str(tmp_path / "data"),
            "BLOB_STORE": "local",
            "PORT": str(port),
            "CPU_WORKERS": "1",
            "GPU_COUNT": "0",
            "WORKER_MAX_RESTARTS": "1",
            "WORKER_HEARTBEAT_S": "0.5",
            "WORKER_TTL_S": "3",
            "REQUEST_TIMEOUT_S": "60",
        }
    )
    worker = ServiceProcess(["worker"], env, tmp_path / "worker.log").start()
    api = ServiceProcess(["api"], env, tmp_path / "api.log").start()
    url = f"http://127.0.0.1:{port}"
    try:
        assert worker.process is not None
        worker.process.wait(timeout=180)  # two failed starts, then the supervisor gives up
        assert worker.process.returncode == 1, worker.log()[-3000:]
        assert worker.log().count("failed to start: ") == 2  # each worker process says why
        assert "failed to start 2 times in a row; not restarting it (WORKER_MAX_RESTARTS=1)" in worker.log()

        def answers() -> bool:
            try:
                return httpx.get(f"{url}/livez", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, 60, "the API answering")
        started = time.monotonic()
        reply = httpx.post(
            f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=30
        )
        assert time.monotonic() - started < 2
        assert reply.status_code == 503, reply.text
        error = reply.json()["error"]
        assert error["code"] == "model_load_failed" and "no worker could load the model" in error["message"]
        assert reply.headers["Retry-After"]
        health = httpx.get(f"{url}/health", timeout=5).json()
        assert health["ready"] is False and health["startup_ok"] is False
        assert health["startup_error"] and health["startup_error"] in error["message"]
    finally:
        api.stop()
        worker.stop()
