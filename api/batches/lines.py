"""One line of a batch: read it from the input file, check it, and write its output line.

Input lines are OpenAI's `{"custom_id", "method", "url", "body"}`. A line that cannot become a job
(bad JSON, unknown endpoint, duplicate custom_id, invalid body, wrong model, bad image) becomes an
error line for its custom_id; the rest of the batch runs. Output lines follow OpenAI's batch
output format: `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgspec

CHUNK = 1 << 16


class LineError(msgspec.Struct, frozen=True):
    line: int
    custom_id: str | None
    code: str
    message: str
    param: str | None = None


@dataclass(frozen=True)
class RawLine:
    number: int  # 1-based, counting every line of the file
    data: bytes
    end_offset: int  # byte offset just after this line: where to resume reading
    too_long: bool = False  # over the limit: `data` holds only its start


class LineReader:
    """Reads lines from a blob stream from a byte offset, remembering where it is. Holds at most
    one line (capped) in memory, however large the file."""

    def __init__(self, stream: BinaryIO, offset: int, line_number: int, max_line_bytes: int) -> None:
        self.stream = stream
        self.offset = offset
        self.line_number = line_number
        self.max_line_bytes = max_line_bytes
        self._buffer = b""
        self._eof = False

    def _emit(self, data: bytes, consumed: int, too_long: bool = False) -> RawLine:
        if too_long or consumed > self.max_line_bytes:
            data, too_long = data[:1024], True
        self.offset += consumed
        self.line_number += 1
        return RawLine(self.line_number, data.rstrip(b"\r\n"), self.offset, too_long)

    def _discard_rest_of_line(self) -> int:
        consumed = 0
        while chunk := self.stream.read(CHUNK):
            newline = chunk.find(b"\n")
            if newline >= 0:
                self._buffer = chunk[newline + 1 :]
                return consumed + newline + 1
            consumed += len(chunk)
        self._eof = True
        return consumed

    def _next_line(self) -> RawLine | None:
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                data, self._buffer = self._buffer[: newline + 1], self._buffer[newline + 1 :]
                return self._emit(data, len(data))
            if self._eof:
                if not self._buffer:
                    return None
                data, self._buffer = self._buffer, b""
                return self._emit(data, len(data))
            if len(self._buffer) > self.max_line_bytes:
                prefix, consumed = self._buffer[:1024], len(self._buffer)
                self._buffer = b""
                return self._emit(prefix, consumed + self._discard_rest_of_line(), too_long=True)
            chunk = self.stream.read(CHUNK)
            self._eof = not chunk
            self._buffer += chunk

    def read(self, count: int) -> list[RawLine]:
        """Up to `count` non-blank lines (blank lines are skipped); [] at the end of the file."""
        out: list[RawLine] = []
        while len(out) < count and (line := self._next_line()) is not None:
            if line.too_long or line.data.strip():
                out.append(line)
        return out

    def close(self) -> None:
        self.stream.close()


def count_lines(stream: BinaryIO) -> int:
    """Non-blank lines of a file, reading it once in chunks."""
    reader = LineReader(stream, 0, 0, max_line_bytes=1 << 62)
    total = 0
    while lines := reader.read(1024):
        total += len(lines)
    return total


def parse_line(line: RawLine, endpoint: str, max_line_bytes: int) -> tuple[str, dict[str, Any]] | LineError:
    # max_line_bytes only names the limit in the message: the reader already enforced it.
    """(custom_id, body) of a well-formed line, or why it is not one."""
    if line.too_long:
        return LineError(line.number, None, "line_too_large", f"the line is larger than {max_line_bytes} bytes")
    try:
        obj = json.loads(line.data)
    except json.JSONDecodeError as exc:
        return LineError(line.number, None, "invalid_json", f"the line is not valid JSON: {exc.msg}")
    except (ValueError, RecursionError):
        return LineError(line.number, None, "invalid_json", "the line is not valid JSON")
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
    return {
        "id": f"batch_req_{batch_id}_line{error.line}",
        "custom_id": error.custom_id,
        "response": None,
        "error": {"code": error.code, "message": error.message, "param": error.param, "line": error.line},
    }
