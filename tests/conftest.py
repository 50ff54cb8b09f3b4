"""Session fixtures: real redis-server, real S3-compatible server (moto), the generated demo model,
a local image host (the only thing outside the system), and running service stacks."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.support.images import ImageHost, start_image_host
from tests.support.procs import RedisServer, start_redis
from tests.support.stack import Stack, StackFactory


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
    from workers.demo_model import build_demo_model

    return build_demo_model(Path(tempfile.mkdtemp(prefix="omega-demo-")) / "demo-model")


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end tests start real processes: mark them slow (`make unit` skips them)."""
    for item in items:
        if "/tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.slow)
