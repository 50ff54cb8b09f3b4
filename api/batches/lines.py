"""One line of a batch: read it from the input file, check it, and write its output line.

Input lines are OpenAI's `{"custom_id", "method", "url", "body"}`. A line that cannot become a job
(bad JSON, unknown endpoint, duplicate custom_id, invalid body, wrong model, bad image) becomes an
error line for its custom_id; the rest of the batch runs. Output lines follow OpenAI's batch
output format: `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO

import msgspec

from api.files.jsonl import scan_lines


class LineError(msgspec.Struct, frozen=True):
    line: int
    custom_id: str | None
    code: str
    message: str
    param: str | None = None
    # The HTTP status and error type the same request would have got interactively, when building
    # its job raised a ServiceError; a 5xx (an image host timing out) is retryable, not the line's fault.
    status: int | None = None
    type: str | None = None


@dataclass(frozen=True)
class RawLine:
    number: int  # 1-based, counting every line of the file
    data: bytes
    end_offset: int  # byte offset just after this line: where to resume reading
    too_long: bool = False  # over the limit: `data` holds only its start


class LineReader:
    """Reads lines from a blob stream from a byte offset, remembering where it is. Holds at most
    one line (capped at `max_line_bytes`) in memory however large the file, and never joins
    more of a longer line than its start (api/files/jsonl.py)."""

    def __init__(self, stream: BinaryIO, offset: int, line_number: int, max_line_bytes: int) -> None:
        self.stream = stream
        self.offset = offset
        self.line_number = line_number
        self._lines = scan_lines(stream, keep=max_line_bytes)

    def read(self, count: int, max_bytes: int | None = None) -> list[RawLine]:
        """Up to `count` non-blank lines (blank lines are skipped); [] at the end of the file.
        With `max_bytes`, no further line is read once the lines read hold that many bytes (at
        least one line is), so one step of a batch of huge lines holds one or two of them."""
        out: list[RawLine] = []
        held = 0
        while len(out) < count and (max_bytes is None or held < max_bytes):
            line = next(self._lines, None)
            if line is None:
                break
            self.offset += line.size
            self.line_number += 1
            if not line.blank:
                out.append(RawLine(self.line_number, line.data, self.offset, too_long=not line.whole))
                held += len(line.data)
        return out

    def close(self) -> None:
        self.stream.close()


def count_lines(stream: BinaryIO) -> int:
    """Non-blank lines of a file, reading it once in chunks (no line is joined)."""
    return sum(not line.blank for line in scan_lines(stream, keep=0))


def parse_line(line: RawLine, endpoint: str, max_line_bytes: int) -> tuple[str, dict[str, Any]] | LineError:
    # max_line_bytes only names the limit in the message: the reader already enforced it.
    """(custom_id, body) of a well-formed line, or why it is not one."""
    if line.too_long:
        return LineError(line.number, None, "line_too_large", f"the line is larger than {max_line_bytes} bytes")
    try:
        # msgspec, not json: 5x faster on a large line, and the parse holds the GIL throughout.
        obj = msgspec.json.decode(line.data)
    except msgspec.MsgspecError as exc:
        return LineError(line.number, None, "invalid_json", f"the line is not valid JSON: {exc}")
    except RecursionError:
        return LineError(line.number, None, "invalid_json", "the line is not valid JSON (nested too deeply)")
    if not isinstance(obj, dict):
        return LineError(line.number, None, "invalid_json", "the line must be a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineError(line.number, None, "missing_custom_id", "custom_id must be a non-empty string", "custom_id")
    if obj.get("method", "POST") != "POST":
        return LineError(line.number, custom_id, "invalid_method", "method must be POST", "method")
    if obj.get("url") != endpoint:
        return LineError(
            line.number,
            custom_id,
            "invalid_url",
            f"url {obj.get('url')!r} does not match the batch endpoint {endpoint}",
            "url",
        )
    body = obj.get("body")
    if not isinstance(body, dict):
        return LineError(line.number, custom_id, "invalid_body", "body must be a JSON object", "body")
    return custom_id, body


def success_line(job_id: str, custom_id: str, completion: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"batch_req_{job_id}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": job_id, "body": completion},
        "error": None,
    }


def failure_line(job_id: str, custom_id: str | None, status: int, error: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"batch_req_{job_id}",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": job_id, "body": {"error": error}},
        "error": None,
    }


def line_error_line(batch_id: str, error: LineError) -> dict[str, Any]:
    """The error row of a line that never became a job. A server-side failure (5xx) is answered as
    a failed request with its status (as `failure_line`), so a client can tell it is worth a retry."""
    if error.status is not None and error.status >= 500:
        body = {
            "message": error.message,
            "type": error.type or "server_error",
            "param": error.param,
            "code": error.code,
        }
        return {
            "id": f"batch_req_{batch_id}_line{error.line}",
            "custom_id": error.custom_id,
            "response": {
                "status_code": error.status,
                "request_id": f"{batch_id}-{error.line}",
                "body": {"error": body},
            },
            "error": None,
        }
    return {
        "id": f"batch_req_{batch_id}_line{error.line}",
        "custom_id": error.custom_id,
        "response": None,
        "error": {"code": error.code, "message": error.message, "param": error.param, "line": error.line},
    }
