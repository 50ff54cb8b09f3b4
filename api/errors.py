"""The one place exceptions become responses: OpenAI's error shape, never a traceback.

`{"error": {"message", "type", "param", "code"}}` for everything a client can cause (validation,
auth, size, routing) and for service-side trouble (Redis or blob store down, or Redis full at its
`maxmemory` with `noeviction`: 503 + Retry-After). JSON nested deeper than the decoder's recursion
limit (about 1000 levels) raises RecursionError while Litestar decodes the body: that is the
client's input, a 400.
Unexpected exceptions are logged with their traceback and answered with a generic 500.
A leaf module: it imports nothing of the API, so every slice can raise through it. The rejections
counter lives here because this handler is where every refusal passes; /metrics renders it from
prometheus_client's default registry.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE
from prometheus_client import Counter
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import (
    InternalError,
    InvalidRequest,
    PayloadTooLarge,
    ServiceError,
    ServiceUnavailable,
    error_from_fields,
)

log = logging.getLogger("omega.api.errors")
REJECTIONS = Counter("omega_api_rejections", "Requests refused for capacity or size, by reason", ["reason"])


def record_rejection(status: int, code: str | None) -> None:
    if status in (413, 429, 503):
        REJECTIONS.labels(code or str(status)).inc()


def _validation_error(exc: ValidationException) -> ServiceError:
    problems = exc.extra if isinstance(exc.extra, list) else []
    if not problems:
        return InvalidRequest(str(exc.detail) or "invalid request")
    first = problems[0] if isinstance(problems[0], dict) else {}
    key = str(first.get("key") or "")
    message = str(first.get("message") or "invalid value")
    if key in ("", "data"):
        # Litestar's message for a missing body is just "'data'".
        return InvalidRequest(
            "the request body must be a JSON object" if message.startswith("'") else f"invalid request body: {message}",
            param=None,
        )
    return InvalidRequest(f"{key}: {message}", param=key)


def redis_is_full(exc: BaseException) -> bool:
    """Redis refused a write at its maxmemory (noeviction). In a MULTI/EXEC pipeline redis-py
    raises ExecAbortError with the OOM refusal as its cause."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RedisOutOfMemoryError) or (
            isinstance(seen, RedisResponseError) and str(seen).startswith("OOM")
        ):
            return True
        seen = seen.__cause__
    return False


def to_service_error(exc: Exception) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, ValidationException):
        return _validation_error(exc)
    if isinstance(exc, HTTPException):
        if exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
            return PayloadTooLarge("the request body is larger than MAX_REQUEST_BYTES")
        if exc.status_code == 400:
            return InvalidRequest(f"invalid request: {exc.detail}")
        return error_from_fields(exc.status_code, str(exc.detail), None, None)
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return ServiceUnavailable("the job queue is unavailable; retry shortly", code="queue_unavailable")
    if redis_is_full(exc):
        # Redis at maxmemory (noeviction) refuses writes: nothing was stored; retry once it drains.
        return ServiceUnavailable("the job queue is full (Redis maxmemory); retry shortly", code="queue_full")
    if isinstance(exc, RecursionError):
        return InvalidRequest("the JSON body is nested too deeply", code="json_too_deep")
    return InternalError("internal server error")


def exception_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, dict[str, str | None]]]:
    error = to_service_error(exc)
    record_rejection(error.status_code, error.code)
    if error.status_code >= 500 and not isinstance(exc, ServiceError):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return Response(error.body(), status_code=error.status_code, headers=error.headers, media_type=MediaType.JSON)
