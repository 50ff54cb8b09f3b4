"""Session fixtures: real redis-server, real S3-compatible server (moto), the generated demo model,
a local image host (the only thing outside the system), and running service stacks."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.support.images import ImageHost, start_image_host
from tests.support.procs import RedisServer, start_redis
from tests.support.stack import Stack, StackFactory

# Service processes are forked from a preloaded interpreter unless TEST_ZYGOTE=0 (tests/support/zygote.py).
os.environ.setdefault("TEST_ZYGOTE", "1")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    from tests.support.procs import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    ).create_bucket(Bucket="omega-test")
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """Built once per checkout and shared by every xdist worker (a lock: one builder at a time);
    keyed by the builder's source and transformers' version, so a change to either rebuilds it.
    Tests only read it (those that need a changed model copy it first)."""
    import hashlib

    import transformers

    from workers import demo_model

    source = Path(demo_model.__file__).read_bytes() + transformers.__version__.encode()
    key = hashlib.sha256(source).hexdigest()[:12]
    root = Path(__file__).resolve().parents[1]
    return demo_model.ensure_demo_model(root / ".omega" / "test" / f"demo-model-{key}")


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    host = start_image_host()
    yield host
    host.stop()


@pytest.fixture(scope="session")
def stacks(redis_server: RedisServer, s3_endpoint: str, demo_model_dir: Path) -> Iterator[StackFactory]:
    factory = StackFactory(redis_server, s3_endpoint, demo_model_dir)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def stack(stacks: StackFactory) -> Stack:
    """The shared stack: one CPU worker, S3 blob store, an open API (no key)."""
    return stacks.get("main", workers=1)


STRICT_KEY = "test-secret-key"


@pytest.fixture(scope="session")
def strict_api(stack: Stack) -> str:
    """A second API on the shared fleet: API key on, remote images off, small limits."""
    return stack.start_api(
        "strict",
        API_KEY=STRICT_KEY,
        ALLOW_REMOTE_IMAGES="0",
        MAX_REQUEST_BYTES="300000",
        MAX_IMAGES_PER_REQUEST="2",
        MAX_QUEUE_SIZE="2",
    )


# `make test` runs on pytest-xdist workers (Makefile: -n, --dist loadfile --no-loadscope-reorder): each
# test file is one unit of work, so its module fixtures (a make-run service, a worker fleet) start once,
# on one worker. Units are handed out in collection order, so the longest files are put first:
# otherwise a 100-second file picked up last would run alone at the end.
LONGEST_FIRST = (  # by wall time in a serial run (2026-12-02), longest first
    "tests/test_benchmarks.py",
    "tests/e2e/test_faults.py",
    "tests/e2e/test_attacks_against_make_run.py",
    "tests/workers/continuous/test_worker.py",
    "tests/workers/test_model_source.py",
    "tests/workers/test_streaming.py",
    "tests/e2e/test_startup_failure.py",
    "tests/e2e/test_make_run.py",
    "tests/e2e/test_model_loading.py",
    "tests/e2e/test_make_run_model_path.py",
    "tests/e2e/test_drain_deadline.py",
    "tests/e2e/test_sentinel_failover.py",
    "tests/e2e/test_orphan_work.py",
    "tests/e2e/test_fleet_ops.py",
    "tests/omega_vlm/test_preflight.py",
    "tests/e2e/test_jobs_api.py",
    "tests/e2e/test_caption.py",
    "tests/shared/test_redis_connect.py",
    "tests/models/test_family_matrix.py",
    "tests/omega_vlm/test_caption_guards.py",
    "tests/test_continuous_core_benchmark.py",
    "tests/e2e/test_batches.py",
    "tests/e2e/test_model_families.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end tests start real processes: mark them slow (`make unit` skips them). The
    known-long files go first (a stable sort: everything else keeps its order)."""
    root = Path(__file__).resolve().parents[1]

    def rank(item: pytest.Item) -> int:
        relative = Path(item.path).relative_to(root).as_posix()
        return LONGEST_FIRST.index(relative) if relative in LONGEST_FIRST else len(LONGEST_FIRST)

    for item in items:
        if "/tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.slow)
    items.sort(key=rank)


SESSION_TMP = "OMEGA_TEST_SESSION_TMP"  # the run's own temporary folder (set by the controller)


def pytest_configure(config: pytest.Config) -> None:
    """The controller (the xdist controller, or the one process of a run without xdist) gives the
    run a temporary folder of its own, through TMPDIR, so that everything the suite and the services
    it starts put in temporary folders (data folders, Redis files, a `make run` with its demo model:
    ~270 MB a run) is one folder, removed when the run passes (kept for a look when it fails). The
    xdist controller also starts the session's zygote before its workers (tests/support/zygote.py):
    one for the whole run, its imports beside the workers' collection, instead of one per worker."""
    if hasattr(config, "workerinput"):
        return
    if SESSION_TMP not in os.environ:
        session_tmp = tempfile.mkdtemp(prefix="omega-tests-")
        os.environ[SESSION_TMP] = os.environ["TMPDIR"] = session_tmp
        tempfile.tempdir = session_tmp
    is_controller = config.getoption("numprocesses", None)
    if is_controller and os.environ.get("TEST_ZYGOTE") == "1" and not config.option.collectonly:
        from tests.support.procs import service_env
        from tests.support.zygote import start_session_zygote

        start_session_zygote(service_env({}))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """This process's connection to the session's zygote, the zygote itself where this process
    started it (tests/support/zygote.py), and the run's temporary folder where this process made it."""
    from tests.support.zygote import stop_shared_zygote

    stop_shared_zygote()
    if not hasattr(session.config, "workerinput") and SESSION_TMP in os.environ:
        session_tmp = os.environ[SESSION_TMP]
        if exitstatus == 0:
            shutil.rmtree(session_tmp, ignore_errors=True)
        else:
            print(f"\nthe run's temporary files are kept in {session_tmp}")
