"""Start-up checks: a taken port and a wrong MODEL_PATH are one plain line and a quick exit;
worker restarts stop after WORKER_MAX_RESTARTS."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omega_vlm.preflight import PreflightError, bind_listener, check_model_path
from shared.exit_codes import EXIT_START_FAILED
from shared.settings_sources import load_settings
from tests.support.procs import ROOT, free_port


@pytest.fixture
def taken_port() -> Iterator[int]:
    """Another server listening on a port (it never answers: nothing must be mistaken for Ready)."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield int(other.getsockname()[1])


def omega(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    full = {**{k: v for k, v in os.environ.items() if not k.startswith(("OMEGA_", "MODEL_"))}, **env}
    full["PYTHONPATH"] = str(ROOT)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "omega_vlm.cli", *args], env=full, capture_output=True, text=True, timeout=timeout
    )
    return result, time.monotonic() - started


@pytest.mark.parametrize("command", ["up", "api"])
def test_a_taken_port_is_a_plain_error_and_a_quick_exit(command: str, taken_port: int, tmp_path: Path) -> None:
    env = {
        "DATA_DIR": str(tmp_path),
        # Nothing answers here: `up` would start a private redis-server, if it got that far.
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    result, elapsed = omega(command, "--host", "127.0.0.1", "--port", str(taken_port), env=env)
    assert result.returncode == 2, result.stderr
    assert f"port {taken_port} is in use on 127.0.0.1" in result.stderr
    assert "Ready" not in result.stdout + result.stderr
    assert elapsed < 20  # imports only; nothing was started (the review saw a 150 s hang)
    assert not (tmp_path / "redis").exists() and not (tmp_path / "demo-model").exists()


def test_bind_listener_names_the_port(taken_port: int) -> None:
    with pytest.raises(PreflightError, match=f"port {taken_port} is in use"):
        bind_listener("127.0.0.1", taken_port)
    port = free_port()
    sock = bind_listener("127.0.0.1", port)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # it listens at once: connections wait in the backlog for the API
    finally:
        sock.close()


@pytest.mark.parametrize("command", ["up", "worker"])
def test_a_missing_model_folder_names_model_path(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    env = {"DATA_DIR": str(tmp_path), "MODEL_PATH": str(missing), "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result, elapsed = omega(command, "--port", str(free_port()), env=env)
    assert result.returncode == 2
    assert f"MODEL_PATH={missing}: no such folder" in result.stderr
    assert "Repo id must be" not in result.stderr and "Traceback" not in result.stderr
    assert elapsed < 20


def test_model_path_rules(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "weights.bin").write_bytes(b"x")
    check_model_path(load_settings(environ={"MODEL_PATH": str(tmp_path / "model")}))
    check_model_path(load_settings(environ={"MODEL_PATH": "Qwen/Qwen2-VL-2B-Instruct"}))  # a hub repo id
    check_model_path(load_settings(environ={}))  # the demo model
    for bad, message in [
        (str(tmp_path / "empty"), "without config.json"),
        (str(tmp_path / "weights.bin"), "is a file"),
        ("./models/qwen", "no such folder"),
        ("~/models/qwen", "no such folder"),
        ("a/b/c", "no such folder"),
        ("not a repo id!", "no such folder"),
    ]:
        with pytest.raises(PreflightError, match=message):
            check_model_path(load_settings(environ={"MODEL_PATH": bad}))


# A child that appends its exit code to a file, then exits with the codes listed, in turn.
SUPERVISE = """
import sys
from omega_vlm.supervisor import Child, Supervisor
codes = sys.argv[3]
child = (
    "import sys; log = open(sys.argv[1], 'a+'); log.seek(0); n = len(log.read());"
    "code = int(sys.argv[2][min(n, len(sys.argv[2]) - 1)]); log.write(str(code)); sys.exit(code)"
)
worker = Child(name="worker", argv=[sys.executable, "-c", child, sys.argv[1], codes])
sys.exit(Supervisor([worker], {}, max_restarts=int(sys.argv[2])).run())
"""


def supervise(tmp_path: Path, max_restarts: int, codes: str) -> tuple[subprocess.CompletedProcess[str], str, float]:
    starts = tmp_path / "starts"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", SUPERVISE, str(starts), str(max_restarts), codes],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, starts.read_text(), time.monotonic() - started


def test_failed_starts_back_off_and_stop_after_max_restarts(tmp_path: Path) -> None:
    result, starts, elapsed = supervise(tmp_path, 2, str(EXIT_START_FAILED))
    assert result.returncode == 1
    assert starts == str(EXIT_START_FAILED) * 3  # the first start and 2 restarts
    assert elapsed >= 1.5  # backoff: 0.5 s, then 1 s
    assert "failed to start 3 times in a row; not restarting it (WORKER_MAX_RESTARTS=2)" in result.stderr


def test_crashes_of_a_running_worker_do_not_count_as_failed_starts(tmp_path: Path) -> None:
    # A failed start, a crash (exit 9: it had started), then failed starts: the crash resets the
    # count, so with WORKER_MAX_RESTARTS=1 the supervisor gives up at the second failure after it.
    f = str(EXIT_START_FAILED)
    result, starts, _ = supervise(tmp_path, 1, f + "9" + f)
    assert result.returncode == 1
    assert starts == f + "9" + f + f
