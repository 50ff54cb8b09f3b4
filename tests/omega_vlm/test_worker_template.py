"""CPU workers forked from the worker template (omega_vlm/worker_template.py): the supervisor's
restarts fork instead of re-importing, exit codes read as from exec'd workers, a dead template is
replaced, and everything still stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omega_vlm.supervisor import Child, Supervisor
from omega_vlm.worker_template import ForkedWorker, Template
from shared import keys
from shared.exit_codes import EXIT_USAGE
from tests.support.procs import ROOT, RedisServer, ServiceProcess, service_env, wait_for

pytestmark = pytest.mark.slow
DB = 14  # the stack factory counts up from 0


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_exit_codes_of_forked_workers_read_as_from_exec_d_ones(tmp_path: Path) -> None:
    template = Template(service_env({"MODEL_PATH": str(tmp_path / "no-such-model")}))
    try:
        refused = template.start(["worker", "--device", "cpu"])
        assert refused.wait(60) == EXIT_USAGE  # the preflight's plain refusal of a missing MODEL_PATH
        idle = template.start(["--help"])
        assert idle.wait(60) == 0
        assert idle.poll() == 0  # kept once read
    finally:
        template.close()
    assert template.process.returncode == 0  # it ends when its stdin closes


def test_a_killed_forked_worker_reads_as_killed(demo_model_dir: Path, tmp_path: Path) -> None:
    # A worker whose Redis never answers keeps trying: it is running when it is killed.
    env = {"MODEL_PATH": str(demo_model_dir), "REDIS_URL": "redis://127.0.0.1:1/0", "DATA_DIR": str(tmp_path)}
    template = Template(service_env(env))
    try:
        running = template.start(["worker", "--device", "cpu"])
        assert isinstance(running, ForkedWorker)
        time.sleep(0.5)
        assert running.poll() is None
        running.kill()
        assert running.wait(60) == -signal.SIGKILL
    finally:
        template.close()


@pytest.fixture
def fleet(redis_server: RedisServer, demo_model_dir: Path, tmp_path: Path) -> Iterator[tuple[ServiceProcess, RedisServer]]:
    redis_server.client(DB).flushdb()
    env = service_env(
        {
            "REDIS_URL": redis_server.url(DB),
            "MODEL_PATH": str(demo_model_dir),
            "DATA_DIR": str(tmp_path),
            "CPU_WORKERS": "2",
            "WORKER_HEARTBEAT_S": "0.3",
            "WORKER_PROBE_PORT": "0",
        }
    )
    supervisor = ServiceProcess(["worker"], env, tmp_path / "workers.log").start()
    yield supervisor, redis_server
    supervisor.stop()


def test_the_supervisor_forks_cpu_workers_from_one_template_and_replaces_a_dead_one(
    fleet: tuple[ServiceProcess, RedisServer],
) -> None:
    supervisor, redis_server = fleet
    assert supervisor.process is not None
    supervisor_pid = supervisor.process.pid
    redis = redis_server.client(DB)

    def registered(pids: set[int]) -> bool:
        """Both workers are up, and registered with these pids (rq's worker names end in them)."""
        names = [n.decode() for n in redis.smembers("rq:workers")]
        return len(pids) == 2 and {int(n.rsplit(".", 1)[1]) for n in names if "." in n} >= pids

    def fleet_now() -> tuple[int, list[int]]:
        """The supervisor's one child (the template) and its children (0 and none meanwhile)."""
        try:
            [template] = children(supervisor_pid)
            return template, children(template)
        except (ValueError, FileNotFoundError):
            return 0, []

    wait_for(lambda: registered(set(fleet_now()[1])), 120, "two forked workers")
    template, workers = fleet_now()
    assert "omega_vlm.worker_template" in cmdline(template)
    for pid in workers:  # ps shows what an exec'd worker's command line would be
        assert "-m omega_vlm.cli worker --device cpu --worker-index" in cmdline(pid)
    assert redis.zcard(keys.WORKERS) >= 2

    # A worker killed mid-life is forked again from the same template: no second set of imports.
    victim, survivor = workers
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in fleet_now()[1] and len(fleet_now()[1]) == 2, 60, "the worker forked again")
    assert fleet_now()[0] == template and survivor in fleet_now()[1]

    # A template that dies takes its workers down (SIGTERM: they drain); the supervisor starts a
    # new template and forks both workers again.
    os.kill(template, signal.SIGKILL)
    wait_for(lambda: fleet_now()[0] != template and registered(set(fleet_now()[1])), 120, "a new template")
    assert not {survivor, victim} & set(fleet_now()[1])

    # SIGTERM reaches everything: workers first, then the template.
    new_template, new_workers = fleet_now()
    assert supervisor.stop() == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in (new_template, *new_workers)):
        time.sleep(0.1)
    assert not [p for p in (new_template, *new_workers) if Path(f"/proc/{p}").exists()]


def test_a_template_that_cannot_import_leaves_workers_exec_d(tmp_path: Path) -> None:
    """Broken imports (here a transformers that raises) stop the template, not the workers: they
    are exec'd, and fail or run on their own."""
    broken = tmp_path / "broken" / "transformers"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('a broken transformers install')\n")
    env = service_env({"PYTHONPATH": f"{broken.parent}{os.pathsep}{ROOT}"})
    child = Child(name="worker cpu#0", argv=[sys.executable, "-c", "raise SystemExit(7)"], fork_args=["--help"])
    supervisor = Supervisor([child], env)
    supervisor.start(child)
    assert supervisor.template_failed and supervisor.template is None
    assert isinstance(child.process, subprocess.Popen) and child.process.wait(60) == 7
    supervisor.start(child)  # not tried again for every restart
    assert isinstance(child.process, subprocess.Popen) and child.process.wait(60) == 7
