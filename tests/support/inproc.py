"""The in-process API for the fast test tier: the real app under Litestar's test client, against
the session's redis-server, and the fleet record of a worker for it to route to.

Nothing here spawns a process or loads a model (no torch): requests that are refused before they
reach a worker need only this. tests/support/inproc_worker.py adds a real worker.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis

from api.app import create_app
from shared import keys
from shared.fleet import ModelCard, WorkerInfo
from shared.settings import Settings
from shared.settings_sources import load_settings
from tests.support.images import ALLOW_NETWORK
from workers.fleet_member import FleetMember

# The e2e stacks count up from db 0; tests/shared/test_janitor.py uses 11, tests/workers and
# tests/api/test_admission 12-15.
DB = 10
WORKER_ID = "inproc-cpu0"
# What the API reads of a worker's model: enough to route and to answer /health. The real
# worker (inproc_worker.py) publishes the demo model's own card instead.
STAND_IN_CARD = ModelCard(path=None, demo=True, dtype="torch.float32", attn="sdpa", chat_template="")


def service_settings(redis_url: str, workdir: Path, **env: str) -> Settings:
    """Settings as the e2e stacks give their processes, with a local blob directory (shared by
    the app and an in-process worker) instead of S3."""
    return load_settings(
        environ={
            "REDIS_URL": redis_url,
            "DATA_DIR": str(workdir),
            "BLOB_STORE": "local",
            "BLOB_DIR": str(workdir / "blobs"),
            "IMAGE_FETCH_ALLOW_NETWORKS": ALLOW_NETWORK,
            "WORKER_HEARTBEAT_S": "0.5",
            "WORKER_TTL_S": "3",
            "REQUEST_TIMEOUT_S": "60",
            **env,
        }
    )


@asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The app with its lifespan run (real Redis pools, blob store, background loops)."""
    async with AsyncTestClient(app=create_app(settings), timeout=60) as client:
        yield client


def fleet_member(settings: Settings, card: ModelCard = STAND_IN_CARD, worker_id: str = WORKER_ID) -> FleetMember:
    """A ready worker's heartbeat record, as a worker process keeps it (start() to publish)."""
    now = time.time()
    info = WorkerInfo(
        id=worker_id,
        queue=keys.worker_queue(worker_id),
        host="inproc",
        pid=os.getpid(),
        device="cpu",
        device_name="cpu",
        capacity=settings.max_batch_size,
        state="ready",
        started_at=now,
        heartbeat_at=now,
        model=card,
    )
    redis = Redis.from_url(settings.redis_url)
    return FleetMember(redis, info, period_s=settings.worker_heartbeat_s, ttl_s=settings.worker_ttl_s)
