"""Reading and checking batch input lines, and the output lines they become (pure rules)."""

from __future__ import annotations

import io
import json

import pytest

# --- the module under test (moves with the batches slice) ------------------------------------
from api.batches.lines import (
    LineError,
    LineReader,
    RawLine,
    count_lines,
    failure_line,
    line_error_line,
    parse_line,
    success_line,
)

ENDPOINT = "/v1/chat/completions"


def reader(data: bytes, offset: int = 0, line_number: int = 0, max_line_bytes: int = 1000) -> LineReader:
    stream = io.BytesIO(data)
    stream.seek(offset)
    return LineReader(stream, offset, line_number, max_line_bytes)


def raw(obj: object, number: int = 1) -> RawLine:
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return RawLine(number, data, 0)


def test_reader_skips_blank_lines_but_counts_them_and_tracks_offsets() -> None:
    data = b'{"a": 1}\n\n   \r\n{"b": 2}\r\n{"c": 3}'
    lines = reader(data).read(10)
    assert [(line.number, line.data) for line in lines] == [(1, b'{"a": 1}'), (4, b'{"b": 2}'), (5, b'{"c": 3}')]
    assert lines[0].end_offset == 9 and lines[-1].end_offset == len(data)
    assert not any(line.too_long for line in lines)


def test_reader_resumes_where_a_previous_read_stopped() -> None:
    data = b"".join(b'{"n": %d}\n' % i for i in range(10))
    first = reader(data).read(3)
    rest = reader(data, offset=first[-1].end_offset, line_number=first[-1].number).read(100)
    assert [line.number for line in first + rest] == list(range(1, 11))
    assert [json.loads(line.data)["n"] for line in rest] == list(range(3, 10))
    assert reader(data, offset=len(data), line_number=10).read(5) == []


@pytest.mark.parametrize("tail", [b"\n", b""], ids=["newline", "end-of-file"])
def test_a_line_over_the_limit_keeps_only_its_start_and_the_next_line_follows(tail: bytes) -> None:
    long_line = b'{"custom_id": "big", "pad": "' + b"x" * 300_000 + b'"}'
    data = long_line + tail + (b'{"custom_id": "after"}\n' if tail else b"")
    lines = reader(data, max_line_bytes=1000).read(10)
    assert lines[0].too_long and lines[0].data == long_line[:1024] and lines[0].number == 1
    assert lines[0].end_offset == len(long_line) + len(tail)
    if tail:
        assert lines[1].data == b'{"custom_id": "after"}' and lines[1].number == 2 and not lines[1].too_long


def test_count_lines_counts_non_blank_lines() -> None:
    assert count_lines(io.BytesIO(b"a\n\nb\n  \nc")) == 3
    assert count_lines(io.BytesIO(b"")) == 0


def test_a_well_formed_line_gives_its_custom_id_and_body() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert parse_line(raw({"custom_id": "a", "method": "POST", "url": ENDPOINT, "body": body}), ENDPOINT, 10) == (
        "a",
        body,
    )
    # method defaults to POST, as OpenAI's examples sometimes leave it out.
    assert parse_line(raw({"custom_id": "a", "url": ENDPOINT, "body": {}}), ENDPOINT, 10) == ("a", {})


BAD_LINES = [
    pytest.param(b"{not json", None, "invalid_json", None, id="invalid-json"),
    pytest.param(b"[1, 2]", None, "invalid_json", None, id="not-an-object"),
    pytest.param(b"[" * 100_000, None, "invalid_json", None, id="too-deep"),
    pytest.param({"url": ENDPOINT, "body": {}}, None, "missing_custom_id", "custom_id", id="no-custom-id"),
    pytest.param({"custom_id": "", "url": ENDPOINT, "body": {}}, None, "missing_custom_id", "custom_id", id="empty-id"),
    pytest.param({"custom_id": 7, "url": ENDPOINT, "body": {}}, None, "missing_custom_id", "custom_id", id="int-id"),
    pytest.param({"custom_id": "a", "method": "GET", "url": ENDPOINT}, "a", "invalid_method", "method", id="get"),
    pytest.param({"custom_id": "a", "url": "/v1/embeddings", "body": {}}, "a", "invalid_url", "url", id="other-url"),
    pytest.param({"custom_id": "a", "body": {}}, "a", "invalid_url", "url", id="no-url"),
    pytest.param({"custom_id": "a", "url": ENDPOINT}, "a", "invalid_body", "body", id="no-body"),
    pytest.param({"custom_id": "a", "url": ENDPOINT, "body": "hi"}, "a", "invalid_body", "body", id="string-body"),
]


@pytest.mark.parametrize(("line", "custom_id", "code", "param"), BAD_LINES)
def test_bad_lines_say_why(line: object, custom_id: str | None, code: str, param: str | None) -> None:
    error = parse_line(raw(line, number=7), ENDPOINT, 10)
    assert isinstance(error, LineError)
    assert (error.line, error.custom_id, error.code, error.param) == (7, custom_id, code, param)
    assert error.message


def test_a_line_over_the_limit_is_an_error_naming_the_limit() -> None:
    error = parse_line(RawLine(3, b'{"custom_id": "x"', 100, too_long=True), ENDPOINT, 4096)
    assert isinstance(error, LineError)
    assert (error.line, error.code) == (3, "line_too_large") and "4096" in error.message


def test_output_lines_follow_openais_batch_output_format() -> None:
    completion = {"object": "chat.completion"}
    assert success_line("j1", "a", completion) == {
        "id": "batch_req_j1",
        "custom_id": "a",
        "response": {"status_code": 200, "request_id": "j1", "body": completion},
        "error": None,
    }
    error = {"message": "m", "type": "invalid_request_error", "param": "temperature", "code": None}
    failed = failure_line("j2", "b", 400, error)
    assert failed["response"] == {"status_code": 400, "request_id": "j2", "body": {"error": error}}
    assert failed["error"] is None and failed["custom_id"] == "b"
    line = line_error_line("batch_1", LineError(5, None, "invalid_json", "bad"))
    assert line == {
        "id": "batch_req_batch_1_line5",
        "custom_id": None,
        "response": None,
        "error": {"code": "invalid_json", "message": "bad", "param": None, "line": 5},
    }


def test_a_line_failing_upstream_is_a_retryable_failed_request_not_a_bad_line() -> None:
    error = LineError(5, "a", "image_fetch_timeout", "slow", "messages[0]", 504, "server_error")
    assert line_error_line("batch_1", error) == {
        "id": "batch_req_batch_1_line5",
        "custom_id": "a",
        "response": {
            "status_code": 504,
            "request_id": "batch_1-5",
            "body": {
                "error": {
                    "message": "slow",
                    "type": "server_error",
                    "param": "messages[0]",
                    "code": "image_fetch_timeout",
                }
            },
        },
        "error": None,
    }
    refused = line_error_line("batch_1", LineError(6, "b", "image_url_blocked", "no", "messages[0]", 400))
    assert refused["response"] is None and refused["error"]["code"] == "image_url_blocked"
