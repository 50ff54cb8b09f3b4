"""The test zygote (tests/support/zygote.py) starts processes that behave as exec'd ones do: the
service's own exit codes and output, death by a signal as -signum, and a fresh interpreter for a
request whose import-time environment differs."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.procs import ServiceProcess, service_env
from tests.support.zygote import ForkedProcess, Zygote, shared_zygote

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zygote() -> Zygote:
    z = shared_zygote(service_env({}))
    assert z is not None, "TEST_ZYGOTE is on in the test session (tests/conftest.py)"
    return z


def test_a_forked_command_exits_with_its_own_code_and_output(zygote: Zygote, tmp_path: Path) -> None:
    proc = ServiceProcess(["api", "--port", "not-a-port"], service_env({}), tmp_path / "api.log").start()
    assert isinstance(proc.process, ForkedProcess)
    assert proc.process.wait(60) == 2  # argparse's usage error, as from `python -m omega_vlm.cli`
    assert "--port" in proc.log()


def test_a_forked_process_killed_by_a_signal_reads_as_popen_would(zygote: Zygote, tmp_path: Path) -> None:
    env = service_env({"REDIS_URL": "redis://127.0.0.1:1/0", "DATA_DIR": str(tmp_path), "PORT": "0"})
    proc = ServiceProcess(["api"], env, tmp_path / "api.log").start()
    assert isinstance(proc.process, ForkedProcess)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.process.wait(0.3)
    proc.process.send_signal(signal.SIGKILL)
    assert proc.process.wait(30) == -signal.SIGKILL
    proc.process.send_signal(signal.SIGTERM)  # a reaped process is never signalled (its pid may be reused)


def test_only_a_matching_import_time_environment_is_forked(zygote: Zygote, tmp_path: Path) -> None:
    assert zygote.eligible(service_env({"REDIS_URL": "redis://x", "MAX_BATCH_SIZE": "4"}))
    assert not zygote.eligible(service_env({"HF_HUB_OFFLINE": "1"}))
    assert not zygote.eligible(service_env({"CACHE_DIR": str(tmp_path)}))  # the worker sets HF_HUB_CACHE from it
    assert not zygote.eligible({**service_env({}), "OMP_NUM_THREADS": "7"})
    proc = ServiceProcess(["api", "--port", "not-a-port"], service_env({"HF_HUB_OFFLINE": "1"}), tmp_path / "a.log")
    assert isinstance(proc.start().process, subprocess.Popen)
    assert proc.process.wait(60) == 2
