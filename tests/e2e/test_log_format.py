"""One log format across processes: LOG_FORMAT=json makes every line of the API (uvicorn's own
lines and the optional access log included) one JSON object."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.procs import ROOT, RedisServer, ServiceProcess, free_port, service_env, wait_for

DB = 14


def json_lines(text: str) -> list[dict[str, object]]:
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # raises on any line that is not JSON


def test_api_logs_json_with_an_access_log(redis_server: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    env = service_env(
        {
            "REDIS_URL": redis_server.url(DB),
            "DATA_DIR": str(tmp_path),
            "BLOB_STORE": "local",
            "PORT": str(port),
            "LOG_FORMAT": "json",
            "ACCESS_LOG": "1",
            "PROGRESS_LOGS": "1",
        }
    )
    api = ServiceProcess(["api"], env, tmp_path / "api.log").start()
    url = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            try:
                return httpx.get(f"{url}/livez", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, 60, "the API answering")
        httpx.post(f"{url}/v1/chat/completions", json={"messages": []}, timeout=10)  # a 400
        wait_for(lambda: "/v1/chat/completions" in api.log(), 10, "the access log line")
    finally:
        api.stop()
    entries = json_lines(api.log())
    loggers = {e["logger"] for e in entries}
    assert {"uvicorn.error", "uvicorn.access"} <= loggers, loggers
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert any("GET /livez" in str(e["message"]) for e in access)
    assert all(e["process"] == "api" and {"time", "level", "pid", "message"} <= e.keys() for e in entries)


def test_json_format_covers_rq_python_warnings_and_tracebacks(tmp_path: Path) -> None:
    script = (
        "import logging, warnings\n"
        "from shared.logs import configure_logging\n"
        "from shared.settings_sources import load_settings\n"
        "configure_logging(load_settings(environ={'LOG_FORMAT': 'json'}), 'worker-cpu0')\n"
        "logging.getLogger('rq.worker').warning('from rq')\n"
        "warnings.warn('a python warning')\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    logging.getLogger('omega').exception('boom')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stderr
    entries = json_lines(out)
    assert [e["logger"] for e in entries] == ["rq.worker", "py.warnings", "omega"]
    assert all(e["process"] == "worker-cpu0" for e in entries)
    assert "ZeroDivisionError" in str(entries[2]["exception"])
