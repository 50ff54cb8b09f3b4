"""Submit-and-poll helpers over real HTTP, for tests that drive a running API."""

from __future__ import annotations

import time
from typing import Any

import httpx


def submit_job(url: str, body: dict[str, Any]) -> str:
    """POST /v1/jobs; the new job's id (asserting the 202)."""
    r = httpx.post(f"{url}/v1/jobs", json=body, timeout=60)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def final_job(url: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """The job object once it is final, waiting on the server (?wait), not polling fast."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", params={"wait": 20}, timeout=60).json()
        if job["status"] not in ("queued", "running"):
            return dict(job)
    raise TimeoutError(f"job {job_id} is not final")
