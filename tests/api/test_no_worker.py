"""The API with no worker at all (in-process app, real Redis, local blobs): ready to accept, chat
refused at once, jobs accepted and held for a worker, and every held job ends final."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable

from litestar.testing import AsyncTestClient

from api.app import create_app
from shared import keys
from shared.contract import expired_error
from shared.queue import names
from shared.queue.outcomes import latest_outcome
from shared.settings_sources import load_settings
from tests.shared.test_janitor import alive, enqueue
from tests.support.procs import RedisServer

DB = 12
BODY = {"model": "model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_no_worker_ready_to_accept_chat_refused_at_once_jobs_held(redis_server: RedisServer) -> None:
    conn = redis_server.client(db=DB)
    conn.flushdb()
    settings = load_settings(
        environ={
            "REDIS_URL": redis_server.url(DB),
            "BLOB_STORE": "local",
            "BLOB_DIR": tempfile.mkdtemp(prefix="omega-no-worker-"),
            "JANITOR_INTERVAL_S": "0.2",
        }
    )

    async def go() -> None:
        async with AsyncTestClient(app=create_app(settings)) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["fleet_ready"] is False
            assert (await client.get("/readyz", params={"fleet": "true"})).status_code == 503
            health = (await client.get("/health")).json()
            assert health["ready"] is False and health["accepting"] is True

            for stream in (False, True):
                started = time.perf_counter()
                r = await client.post("/v1/chat/completions", json={**BODY, "stream": stream})
                assert time.perf_counter() - started < 0.5
                assert r.status_code == 503 and r.json()["error"]["code"] == "no_workers", r.text
                assert int(r.headers["Retry-After"]) >= 1
            assert not conn.keys(names.job_key("*")), "a refused chat request was stored"

            held = (await client.post("/v1/jobs", json=BODY)).json()
            assert held["status"] == "queued" and held["queue_position"] == 1
            doomed = (await client.post("/v1/jobs", json={**BODY, "expires_after": 0.3})).json()
            dropped = (await client.post("/v1/jobs", json=BODY)).json()
            assert conn.lrange(keys.AWAITING_WORKER, 0, -1) == [j["id"].encode() for j in (held, doomed, dropped)]
            for i in range(2):  # left on the queue of a worker that died: the janitor has nowhere to move them
                enqueue(conn, "omega.gone", f"stranded-{i}")
            metrics = (await client.get("/metrics")).text
            assert "omega_awaiting_worker_jobs 3.0" in metrics and "omega_stranded_jobs 2.0" in metrics
            assert "omega_queue_waiting_jobs_total 5.0" in metrics  # what scaling from zero starts from
            assert (await client.get("/health")).json()["waiting_jobs"] == 5
            conn.delete(names.queue_key("omega.gone"))

            canceled = (await client.delete(f"/v1/jobs/{dropped['id']}")).json()
            assert canceled["status"] == "canceled" and canceled["cancellation"] == "canceled_before_start"
            # Nobody polls it: the janitor ends it at its deadline, worker or not.
            await eventually(lambda: latest_outcome(conn, doomed["id"])[0] is not None, 5, "the janitor")
            assert latest_outcome(conn, doomed["id"])[0] == expired_error(doomed["id"])

            alive(conn, "late")  # a worker is live at last: the feeder moves the held job onto its queue
            queue = names.queue_key("omega.late")
            await eventually(lambda: conn.lrange(queue, 0, -1) == [held["id"].encode()], 5, "the feeder")
            assert conn.llen(keys.AWAITING_WORKER) == 0
            assert (await client.get(f"/v1/jobs/{held['id']}")).json()["status"] == "queued"

    asyncio.run(go())
