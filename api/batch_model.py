"""OpenAI's Batch object and how a batch is kept in Redis (one hash of plain fields).

Counters live in the same hash so workers and the API can bump them atomically (HINCRBY):
`completed`, `failed` and `canceled` for jobs that ended, `line_errors` for input lines that
never became jobs, `submitted` for jobs created.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from shared.contract import BatchStatus
from shared.redis_text import text_or_none

SUPPORTED_ENDPOINTS = ("/v1/chat/completions",)


class RequestCounts(msgspec.Struct):
    total: int
    completed: int
    failed: int


class BatchError(msgspec.Struct):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(msgspec.Struct):
    data: list[BatchError]
    object: str = "list"


class BatchObject(msgspec.Struct, kw_only=True):
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    created_at: int
    expires_at: int
    request_counts: RequestCounts
    object: str = "batch"
    errors: BatchErrors | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    metadata: dict[str, str] | None = None


class BatchList(msgspec.Struct):
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: str = "list"


class BatchRecord:
    """The Redis hash of one batch, decoded; `to_object` gives the OpenAI view."""

    def __init__(self, fields: dict[Any, Any]) -> None:
        self.fields = {text_or_none(k) or "": text_or_none(v) for k, v in fields.items()}

    def text(self, name: str) -> str | None:
        value = self.fields.get(name)
        return value if value else None

    def number(self, name: str) -> int:
        return int(float(self.fields.get(name) or 0))

    def stamp(self, name: str) -> int | None:
        return self.number(name) or None

    @property
    def id(self) -> str:
        return self.fields["id"] or ""

    @property
    def status(self) -> str:
        return self.fields.get("status") or "validating"

    @property
    def outstanding(self) -> int:
        """Jobs created for this batch that have not ended yet."""
        ended = self.number("completed") + self.number("failed") + self.number("canceled")
        return max(0, self.number("submitted") - ended)

    def to_object(self) -> BatchObject:
        errors = self.text("errors")
        metadata = self.text("metadata")
        return BatchObject(
            id=self.id,
            endpoint=self.text("endpoint") or "",
            input_file_id=self.text("input_file_id") or "",
            completion_window=self.text("completion_window") or "24h",
            status=self.status,  # type: ignore[arg-type]
            created_at=self.number("created_at"),
            expires_at=self.number("expires_at"),
            request_counts=RequestCounts(
                total=self.number("total"),
                completed=self.number("completed"),
                failed=self.number("failed") + self.number("line_errors"),
            ),
            errors=msgspec.json.decode(errors, type=BatchErrors) if errors else None,
            output_file_id=self.text("output_file_id"),
            error_file_id=self.text("error_file_id"),
            metadata=json.loads(metadata) if metadata else None,
            in_progress_at=self.stamp("in_progress_at"),
            finalizing_at=self.stamp("finalizing_at"),
            completed_at=self.stamp("completed_at"),
            failed_at=self.stamp("failed_at"),
            expired_at=self.stamp("expired_at"),
            cancelling_at=self.stamp("cancelling_at"),
            cancelled_at=self.stamp("cancelled_at"),
        )
