"""The caption command's HTTP client: submit a job, wait for it, retry what is worth retrying."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from omega_vlm.caption.sources import ImageSource

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_ATTEMPTS = 8
MAX_BACKOFF_S = 30.0


class TransientError(Exception):
    """Gave up after retries on errors that a later run may not see."""


@dataclass(frozen=True)
class Options:
    server: str
    api_key: str | None
    prompt: str
    max_tokens: int
    model: str | None
    wait_s: float = 30.0


def _delay(response: httpx.Response | None, attempt: int) -> float:
    if response is not None:
        header = response.headers.get("Retry-After")
        if header and header.strip().isdigit():
            return min(float(header), MAX_BACKOFF_S)
    return min(MAX_BACKOFF_S, 0.5 * 2.0**attempt) * (0.5 + random.random() / 2)


class CaptionClient:
    def __init__(self, options: Options, concurrency: int) -> None:
        self.options = options
        headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
        self.http = httpx.AsyncClient(
            base_url=options.server.rstrip("/"),
            headers=headers,
            limits=limits,
            timeout=httpx.Timeout(options.wait_s + 30, connect=10),
        )
        self.retries = 0

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """The response, retrying connection errors, 429, 503 and other 5xx with backoff that
        honours Retry-After; raises TransientError when retries run out."""
        last = "no response"
        for attempt in range(MAX_ATTEMPTS):
            response: httpx.Response | None = None
            try:
                response = await self.http.request(method, url, **kwargs)
                if response.status_code not in RETRY_STATUSES:
                    return response
                last = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                last = type(exc).__name__
            self.retries += 1
            await asyncio.sleep(_delay(response, attempt))
        raise TransientError(f"gave up after {MAX_ATTEMPTS} attempts ({last})")

    def _idempotency_key(self, source: ImageSource, attempt: int) -> str:
        """Same image, prompt and settings: the same job, so a rerun after a crash never pays twice.
        A retry after a transient failure (attempt > 0) asks for a new job."""
        o = self.options
        basis = json.dumps([source.key, o.prompt, o.max_tokens, o.model, attempt])
        return "caption-" + hashlib.sha256(basis.encode()).hexdigest()

    async def _image_url(self, source: ImageSource) -> str:
        if source.is_url:
            return source.key
        data = await asyncio.to_thread(Path(source.key).read_bytes)
        return f"data:{source.mime};base64,{base64.b64encode(data).decode()}"

    async def caption(self, source: ImageSource, attempt: int = 0) -> dict[str, Any]:
        """The output row for one image: a caption, or an error (never raises for the image)."""
        o = self.options
        body: dict[str, Any] = {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": await self._image_url(source)}},
                        {"type": "text", "text": o.prompt},
                    ],
                }
            ],
            "max_tokens": o.max_tokens,
            "priority": "batch",
        }
        if o.model:
            body["model"] = o.model
        headers = {"Idempotency-Key": self._idempotency_key(source, attempt)}
        response = await self._request("POST", "/v1/jobs", json=body, headers=headers)
        if response.status_code >= 400:
            return _error_row(source, response)
        job = response.json()
        while job["status"] in ("queued", "running"):
            response = await self._request("GET", f"/v1/jobs/{job['id']}", params={"wait": o.wait_s})
            if response.status_code >= 400:
                return _error_row(source, response)
            job = response.json()
        return _job_row(source, job)

    async def close(self) -> None:
        await self.http.aclose()


def _error_row(source: ImageSource, response: httpx.Response) -> dict[str, Any]:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        error = {"message": response.text[:500], "type": "http_error", "code": None}
    return {
        "image": source.key,
        "error": {**error, "status": response.status_code},
        "retryable": response.status_code in RETRY_STATUSES,
    }


def _job_row(source: ImageSource, job: dict[str, Any]) -> dict[str, Any]:
    if job["status"] == "succeeded":
        result = job["result"]
        choice = result["choices"][0]
        return {
            "image": source.key,
            "caption": choice["message"]["content"],
            "job_id": job["id"],
            "model": result["model"],
            "finish_reason": choice["finish_reason"],
            "prompt_tokens": result["usage"]["prompt_tokens"],
            "completion_tokens": result["usage"]["completion_tokens"],
        }
    error = job.get("error") or {"message": f"job {job['status']}", "type": job["status"], "code": None}
    retryable = job["status"] in ("canceled", "expired") or error.get("type") == "server_error"
    return {
        "image": source.key,
        "error": {**error, "status": job["status"]},
        "job_id": job["id"],
        "retryable": retryable,
    }
