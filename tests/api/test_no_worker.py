"""The API with no worker at all (in-process tier, real Redis): ready to accept, chat refused at
once, jobs accepted and held for a worker, and every held job ends final."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import anyio
import pytest
from redis import Redis

from shared import keys
from shared.contract import expired_error
from shared.queue import names
from shared.queue.outcomes import latest_outcome
from shared.settings import Settings
from tests.api.conftest import Client
from tests.shared.test_janitor import enqueue
from tests.support.inproc import api_client, fleet_member, service_settings

pytestmark = pytest.mark.anyio
BODY = {"model": "model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def lonely_settings(inproc_settings: Settings) -> Settings:
    """The open API's settings (no `fleet` fixture: no worker record), sweeping often."""
    return service_settings(inproc_settings.redis_url, inproc_settings.data_path, JANITOR_INTERVAL_S="0.2")


@pytest.fixture
async def lonely(lonely_settings: Settings) -> AsyncIterator[Client]:
    async with api_client(lonely_settings) as client:
        yield client


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await anyio.sleep(0.05)


async def test_ready_to_accept_while_chat_is_refused_at_once(lonely: Client, redis: Redis) -> None:
    ready = await lonely.get("/readyz")
    assert ready.status_code == 200 and ready.json()["fleet_ready"] is False
    assert (await lonely.get("/readyz", params={"fleet": "true"})).status_code == 503
    health = (await lonely.get("/health")).json()
    assert health["ready"] is False and health["accepting"] is True
    for stream in (False, True):
        started = time.perf_counter()
        r = await lonely.post("/v1/chat/completions", json={**BODY, "stream": stream})
        assert time.perf_counter() - started < 0.5
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_workers", r.text
        assert int(r.headers["Retry-After"]) >= 1
    assert not redis.keys(names.job_key("*")), "a refused chat request was stored"


async def test_jobs_wait_for_a_worker_and_every_one_ends_final(
    lonely: Client, redis: Redis, lonely_settings: Settings
) -> None:
    held = (await lonely.post("/v1/jobs", json=BODY)).json()
    assert held["status"] == "queued" and held["queue_position"] == 1
    doomed = (await lonely.post("/v1/jobs", json={**BODY, "expires_after": 0.3})).json()
    dropped = (await lonely.post("/v1/jobs", json=BODY)).json()
    assert redis.lrange(keys.AWAITING_WORKER, 0, -1) == [j["id"].encode() for j in (held, doomed, dropped)]
    for i in range(2):  # left on the queue of a worker that died: the janitor has nowhere to move them
        enqueue(redis, "omega.gone", f"stranded-{i}")
    metrics = (await lonely.get("/metrics")).text
    assert "omega_awaiting_worker_jobs 3.0" in metrics and "omega_stranded_jobs 2.0" in metrics
    assert "omega_queue_waiting_jobs_total 5.0" in metrics  # what scaling from zero starts from
    assert (await lonely.get("/health")).json()["waiting_jobs"] == 5
    redis.delete(names.queue_key("omega.gone"))

    canceled = (await lonely.delete(f"/v1/jobs/{dropped['id']}")).json()
    assert canceled["status"] == "canceled" and canceled["cancellation"] == "canceled_before_start"
    # Nobody polls it: the janitor ends it at its deadline, worker or not.
    await eventually(lambda: latest_outcome(redis, doomed["id"])[0] is not None, 5, "the janitor")
    assert latest_outcome(redis, doomed["id"])[0] == expired_error(doomed["id"])

    member = fleet_member(lonely_settings, worker_id="late-cpu0")
    member.start()  # a worker is live at last: the feeder moves the held job onto its queue
    try:
        queue = names.queue_key(member.info.queue)
        await eventually(lambda: redis.lrange(queue, 0, -1) == [held["id"].encode()], 5, "the feeder")
        assert redis.llen(keys.AWAITING_WORKER) == 0
        assert (await lonely.get(f"/v1/jobs/{held['id']}")).json()["status"] == "queued"
    finally:
        member.leave()
