"""How a batch is kept in Redis: one hash of plain fields, decoded into OpenAI's Batch object.

Counters live in the same hash so workers and the API can bump them atomically (HINCRBY):
`completed`, `failed` and `canceled` for jobs that ended, `line_errors` for input lines that
never became jobs, `submitted` for jobs created.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from api.batches.protocol import BatchErrors, BatchObject, RequestCounts
from shared.redis_text import text_or_none


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
