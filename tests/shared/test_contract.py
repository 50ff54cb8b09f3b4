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


def test_worker_records_of_old_and_new_workers_read_each_other() -> None:
    import msgspec

    from shared.fleet import WorkerInfo, decode_info, encode_info

    common = {
        "id": "w",
        "queue": "q",
        "host": "h",
        "pid": 1,
        "device": "cpu",
        "device_name": "cpu",
        "capacity": 8,
        "state": "ready",
        "started_at": 1.0,
        "heartbeat_at": 2.0,
    }
    old = msgspec.msgpack.encode(common)  # a worker from before the continuous engine's fields
    info = decode_info(old)
    assert info is not None and (info.engine, info.running, info.free_slots, info.kv_tokens) == ("static", 0, 0, 0)
    new = encode_info(WorkerInfo(**common, engine="continuous", running=3, free_slots=5, kv_tokens=900))  # type: ignore[arg-type]

    class OldInfo(msgspec.Struct, kw_only=True):
        id: str
        capacity: int

    assert msgspec.msgpack.decode(new, type=OldInfo).capacity == 8  # an older reader skips the new fields
    assert decode_info(new) == WorkerInfo(**common, engine="continuous", running=3, free_slots=5, kv_tokens=900)  # type: ignore[arg-type]
