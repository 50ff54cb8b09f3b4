"""The job contract's wire format and vocabulary (shared/contract.py)."""

from __future__ import annotations

import msgspec

from shared.contract import (
    JobResult,
    batch_counter,
    canceled_error,
    decode_result,
    encode,
    expired_error,
    outcome_status,
)
from shared.queue.finish import poison_error


def test_micro_batch_fields_keep_their_wire_names_for_a_rolling_upgrade() -> None:
    """Workers and APIs of the layout before the rename read and write "batch_id"/"batch_size"."""
    result = JobResult(
        text="x", finish_reason="stop", prompt_tokens=1, completion_tokens=1, micro_batch_id="mb1", micro_batch_size=3
    )
    wire = msgspec.msgpack.decode(encode(result))
    assert wire["batch_id"] == "mb1" and wire["batch_size"] == 3 and "micro_batch_id" not in wire
    old_worker = msgspec.msgpack.encode({**wire, "batch_id": "old", "batch_size": 5})
    assert decode_result(old_worker).micro_batch_id == "old" and decode_result(old_worker).micro_batch_size == 5


def test_each_outcome_has_one_status_and_one_batch_counter() -> None:
    ok = JobResult(text="", finish_reason="length", prompt_tokens=1, completion_tokens=1)
    cases = [
        (ok, "succeeded", "completed"),
        (canceled_error("j", running=True), "canceled", "canceled"),
        (expired_error("j"), "expired", "canceled"),
        (poison_error("j", 3), "failed", "failed"),
    ]
    for outcome, status, counter in cases:
        assert (outcome_status(outcome), batch_counter(outcome)) == (status, counter)
