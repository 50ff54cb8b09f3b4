"""The in-process tier end to end: requests through the real app get real completions from the
in-process demo-model worker, with no process spawned."""

from __future__ import annotations

import pytest
from redis import Redis

from tests.api.conftest import Client
from tests.support.images import data_url, image_bytes
from tests.support.inproc_worker import InProcessWorker

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def fleet(inproc_worker: InProcessWorker) -> InProcessWorker:
    """The apps of this module route to the real in-process worker."""
    return inproc_worker


SEEDED = {
    "messages": [
        {
            "role": "user",
            "content": [{"type": "image", "image": data_url(image_bytes())}, {"type": "text", "text": "caption this"}],
        }
    ],
    "max_tokens": 6,
    "min_tokens": 6,
    "seed": 77,
    "temperature": 0.9,
}


async def test_chat_completion_from_the_in_process_worker(client: Client, inproc_worker: InProcessWorker) -> None:
    with inproc_worker.serving():
        r = await client.post("/v1/chat/completions", json=SEEDED)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 6
    # The image went through the app's blob store to the worker: 16 placeholder tokens for it.
    assert body["usage"]["prompt_tokens"] > 16
    assert body["service"]["batch_size"] == 1


async def test_submitted_job_waits_until_drained_then_equals_the_synchronous_answer(
    client: Client, inproc_worker: InProcessWorker, redis: Redis
) -> None:
    submitted = await client.post("/v1/jobs", json=SEEDED)
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    queued = (await client.get(job["poll_url"])).json()
    assert queued["status"] == "queued" and queued["queue_position"] == 1
    assert inproc_worker.waiting() == 1

    inproc_worker.drain()

    done = (await client.get(job["poll_url"])).json()
    assert done["status"] == "succeeded", done
    assert inproc_worker.waiting() == 0
    with inproc_worker.serving():
        sync = (await client.post("/v1/chat/completions", json=SEEDED)).json()
    assert done["result"]["choices"] == sync["choices"]
    assert done["result"]["usage"] == sync["usage"]
