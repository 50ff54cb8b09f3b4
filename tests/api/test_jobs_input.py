"""Submit-and-poll requests that must be refused, in-process (moved from tests/e2e/test_jobs_api.py)."""

from __future__ import annotations

import pytest

from tests.api.conftest import Client
from tests.support.assertions import assert_openai_error

pytestmark = pytest.mark.anyio

TEXT = [{"role": "user", "content": "x"}]


async def test_unknown_job_is_404(client: Client) -> None:
    assert assert_openai_error(await client.get("/v1/jobs/not-a-job"), 404)["code"] == "job_not_found"
    assert assert_openai_error(await client.delete("/v1/jobs/not-a-job"), 404)["code"] == "job_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param({"messages": []}, "messages", id="empty-messages"),
        pytest.param({"messages": TEXT, "expires_after": -1}, "expires_after", id="negative-expires-after"),
        pytest.param({"messages": TEXT, "priority": "urgent"}, "priority", id="unknown-priority"),
        pytest.param({"messages": TEXT, "stream": True}, "stream", id="stream"),
    ],
)
async def test_bad_job_bodies_are_400(client: Client, no_new_jobs: None, body: dict, param: str) -> None:
    assert assert_openai_error(await client.post("/v1/jobs", json=body), 400)["param"] == param


async def test_bad_wait_is_400(client: Client) -> None:
    assert_openai_error(await client.get("/v1/jobs/x", params={"wait": "soon"}), 400)
