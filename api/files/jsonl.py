"""Lines of a stored JSONL file, found chunk by chunk: the one line splitter for uploads and batches.

Why chunks: a file may hold one line of 100+ MB. Reading it as a line (`readline`, `for line in
stream`) builds that line in memory and every pass over it (decode, strip, copy) holds the GIL for
as long as it runs, in a thread or not, so the event loop stalls behind it. Here no step touches
more than one chunk (1 MiB) at a time, and a line is joined only when the caller keeps it whole
(`keep`, at most a batch line's limit); a longer line yields only its start.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

CHUNK = 1 << 20
PREFIX = 1024  # what a line over `keep` keeps: enough to name it in an error row


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


@dataclass(frozen=True)
class ScannedLine:
    size: int  # bytes, its line end included
    blank: bool  # nothing but ASCII whitespace (bytes.strip's notion of blank)
    data: bytes  # the line without its line end, or only its first PREFIX bytes when not `whole`
    whole: bool  # the line is at most `keep` bytes and `data` is all of it


def scan_lines(stream: Readable, keep: int, chunk_size: int = CHUNK) -> Iterator[ScannedLine]:
    """Every line of `stream` from where it stands, blank ones included; the last line may lack
    its newline."""
    parts: list[bytes] | None = []
    head = b""
    size = 0
    blank = True
    while chunk := stream.read(chunk_size):
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start : end + 1]
            start += len(piece)
            size += len(piece)
            blank = blank and piece.isspace()
            if len(head) < PREFIX:
                head += piece[: PREFIX - len(head)]
            if parts is not None:
                if size <= keep:
                    parts.append(piece)
                else:
                    parts = None  # over `keep`: only its start is kept
            if end >= 0:
                yield _line(parts, head, size, blank)
                parts, head, size, blank = [], b"", 0, True
    if size:
        yield _line(parts, head, size, blank)


def _line(parts: list[bytes] | None, head: bytes, size: int, blank: bool) -> ScannedLine:
    if parts is None:
        return ScannedLine(size, blank, head.rstrip(b"\r\n"), whole=False)
    while parts:  # the line end stripped before joining, not after (no second copy of the line)
        end = parts[-1].rstrip(b"\r\n")
        if end:
            parts[-1] = end
            break
        parts.pop()  # a line end split across chunks
    return ScannedLine(size, blank, b"".join(parts), whole=True)
