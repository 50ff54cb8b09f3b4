"""The caption command's HTTP client: submit a job, wait for it, retry what is worth retrying.

It does not trust the server: every answer is read with a cap on its *decoded* size (a small
gzip body can unpack to gigabytes), polling backs off when the server answers at once, and
each image has a total deadline after which its job is canceled.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import random
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from omega_vlm.caption.sources import ImageSource

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_ATTEMPTS = 8
MAX_BACKOFF_S = 30.0
# A job object with its caption is a few KB; nothing the API answers comes near this.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
FIRST_POLL_INTERVAL_S = 0.5
MAX_POLL_INTERVAL_S = 10.0


class TransientError(Exception):
    """Gave up after retries on errors that a later run may not see."""


class BadResponse(Exception):
    """The server's answer is too large, not JSON, or not the shape the jobs API answers."""


@dataclass(frozen=True)
class Options:
    server: str
    api_key: str | None
    prompt: str
    max_tokens: int
    model: str | None
    wait_s: float = 30.0
    deadline_s: float = 3600.0  # per image, from submit to a final job state


@dataclass(frozen=True)
class Reply:
    """A fully read, size-capped HTTP answer."""

    status_code: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise BadResponse(f"the server answered HTTP {self.status_code} with a body that is not JSON") from None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def read_capped(response: httpx.Response, cap: int = MAX_RESPONSE_BYTES) -> bytes:
    """The decoded body, refused past `cap` bytes *after* decompression (inflated step by step)."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
        raise BadResponse(f"the server answered with an unsupported content encoding: {encoding}")
    inflater = zlib.decompressobj(wbits=47) if encoding not in ("", "identity") else None  # 47: gzip or zlib
    body = bytearray()
    async for raw in response.aiter_raw():
        try:
            body += inflater.decompress(raw, cap + 1 - len(body)) if inflater else raw
        except zlib.error:
            raise BadResponse("the server's compressed answer is corrupt") from None
        if len(body) > cap or (inflater is not None and inflater.unconsumed_tail):
            raise BadResponse(f"the server's answer is larger than {cap} bytes")
    return bytes(body)


def _delay(response: Reply | None, attempt: int) -> float:
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
        # identity: the answer is inflated here, under the cap, not by httpx.
        headers["Accept-Encoding"] = "identity"
        self.http = httpx.AsyncClient(
            base_url=options.server.rstrip("/"),
            headers=headers,
            limits=limits,
            timeout=httpx.Timeout(options.wait_s + 30, connect=10),
        )
        self.retries = 0

    async def _send(self, method: str, url: str, **kwargs: Any) -> Reply:
        request = self.http.build_request(method, url, **kwargs)
        response = await self.http.send(request, stream=True)
        try:
            body = await read_capped(response)
        finally:
            await response.aclose()
        return Reply(response.status_code, body, dict(response.headers))

    async def _request(self, method: str, url: str, **kwargs: Any) -> Reply:
        """The answer, retrying connection errors, 429, 503 and other 5xx with backoff that
        honours Retry-After; raises TransientError when retries run out."""
        last = "no response"
        for attempt in range(MAX_ATTEMPTS):
            response: Reply | None = None
            try:
                response = await self._send(method, url, **kwargs)
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
        try:
            response = await self._request("POST", "/v1/jobs", json=body, headers=headers)
            if response.status_code >= 400:
                return _error_row(source, response)
            return await self._wait(source, _job(response))
        except (BadResponse, KeyError, TypeError, IndexError) as exc:
            message = str(exc) if isinstance(exc, BadResponse) else "the server's job object is malformed"
            return {"image": source.key, "error": {"message": message, "type": "bad_response", "code": None}}

    async def _wait(self, source: ImageSource, job: dict[str, Any]) -> dict[str, Any]:
        """Poll the job to a final state: long polls, backing off when the server answers at once,
        until the image's deadline; then the job is canceled and the row says so (retryable)."""
        o = self.options
        deadline = time.monotonic() + o.deadline_s
        interval = FIRST_POLL_INTERVAL_S
        while job["status"] in ("queued", "running"):
            left = deadline - time.monotonic()
            if left <= 0:
                await self._cancel(job["id"])
                message = f"the job did not finish within {o.deadline_s:g} s (--timeout); it was canceled"
                error = {"message": message, "type": "timeout", "code": "caption_timeout"}
                return {"image": source.key, "error": error, "job_id": job["id"], "retryable": True}
            asked = time.monotonic()
            wait = max(1, int(min(o.wait_s, left)))
            response = await self._request("GET", f"/v1/jobs/{job['id']}", params={"wait": wait})
            if response.status_code >= 400:
                return _error_row(source, response)
            job = _job(response)
            answered_in = time.monotonic() - asked
            if job["status"] in ("queued", "running") and answered_in < interval:
                await asyncio.sleep(min(interval - answered_in, max(0.0, deadline - time.monotonic())))
                interval = min(MAX_POLL_INTERVAL_S, interval * 2)
        return _job_row(source, job)

    async def _cancel(self, job_id: str) -> None:
        """Best effort: a job nobody waits for should not keep a worker busy."""
        with contextlib.suppress(httpx.HTTPError, BadResponse):
            await self._send("DELETE", f"/v1/jobs/{job_id}")

    async def close(self) -> None:
        await self.http.aclose()


def _job(response: Reply) -> dict[str, Any]:
    job = response.json()
    if not isinstance(job, dict) or not isinstance(job.get("id"), str) or not isinstance(job.get("status"), str):
        raise BadResponse(f"the server answered HTTP {response.status_code} without a job object")
    return job


def _error_row(source: ImageSource, response: Reply) -> dict[str, Any]:
    try:
        error = response.json()["error"]
    except (BadResponse, KeyError, TypeError):
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
