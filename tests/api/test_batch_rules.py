"""Batch requests and records: completion_window, metadata, the Redis hash as OpenAI's Batch
object (pure rules)."""

from __future__ import annotations

import json

import pytest

# --- the modules under test (move with the batches slice) -------------------------------------
from api.batches.record import BatchRecord
from api.batches.service import MAX_WINDOW_S, check_metadata, window_seconds
from shared.errors import InvalidRequest


@pytest.mark.parametrize(
    ("window", "seconds"),
    [("24h", 86400), ("1h", 3600), ("168h", MAX_WINDOW_S), ("1m", 60), ("90m", 5400)],
)
def test_completion_window(window: str, seconds: int) -> None:
    assert window_seconds(window) == seconds


@pytest.mark.parametrize(
    "window", ["forever", "24", "h", "24H", "1d", " 24h", "24h ", "-1h", "1.5h", "0h", "0m", "169h"]
)
def test_bad_completion_window(window: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        window_seconds(window)
    assert err.value.param == "completion_window"


def test_metadata_limits() -> None:
    check_metadata(None)
    check_metadata({f"k{i}": "v" * 512 for i in range(16)})
    check_metadata({"k" * 64: "v"})
    for bad in ({f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}):
        with pytest.raises(InvalidRequest) as err:
            check_metadata(bad)
        assert err.value.param == "metadata"


def test_record_as_the_openai_batch_object() -> None:
    fields = {
        b"id": b"batch_1",
        b"endpoint": b"/v1/chat/completions",
        b"input_file_id": b"file-1",
        b"completion_window": b"24h",
        b"status": b"in_progress",
        b"created_at": b"100",
        b"expires_at": b"86500",
        b"in_progress_at": b"101",
        b"metadata": json.dumps({"run": "x"}).encode(),
        b"total": b"10",
        b"submitted": b"6",
        b"completed": b"3",
        b"failed": b"1",
        b"canceled": b"1",
        b"line_errors": b"2",
    }
    record = BatchRecord(fields)
    assert record.outstanding == 1  # submitted minus every job that ended
    batch = record.to_object()
    assert (batch.id, batch.status, batch.created_at, batch.in_progress_at) == ("batch_1", "in_progress", 100, 101)
    # Lines that never became jobs count as failed requests, as OpenAI counts them.
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (10, 3, 3)
    assert batch.metadata == {"run": "x"} and batch.errors is None and batch.completed_at is None


def test_a_new_record_is_validating_with_nothing_outstanding() -> None:
    record = BatchRecord({"id": "batch_2", "metadata": ""})
    assert record.status == "validating" and record.outstanding == 0
    batch = record.to_object()
    assert batch.metadata is None and batch.completion_window == "24h" and batch.request_counts.total == 0
