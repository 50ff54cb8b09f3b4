"""Checks every error response must pass."""

from __future__ import annotations

import re

import httpx

_LEAKS = re.compile(r"Traceback|File \"|/work/|/home/|/tmp/|site-packages|127\.0\.0\.\d|redis://|\bat 0x")


def assert_openai_error(response: httpx.Response, status: int, param: str | None = ...) -> dict:  # type: ignore[assignment]
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert not _LEAKS.search(response.text), f"internal detail leaked: {response.text}"
    if param is not ...:
        assert error["param"] == param, error
    return error


def job_keys(redis) -> int:  # type: ignore[no-untyped-def]
    """How many rq jobs exist: bad input must create none."""
    return sum(1 for _ in redis.scan_iter("rq:job:*", count=1000))
