"""The chunked line splitter of uploads and batches (api/files/jsonl.py): the same lines as a plain
split whatever the chunk size, huge lines never joined, and the batch reader's byte budget."""

from __future__ import annotations

import io

import pytest

from api.batches.lines import LineReader
from api.files.jsonl import CHUNK, PREFIX, scan_lines
from api.files.service import SNIFF_PARSE_BYTES, check_jsonl
from shared.errors import InvalidRequest

DATA = b'{"a": 1}\r\n\n  \t\n{"b": "' + b"x" * 40 + b'"}\n\r\n{"c": 3}'


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64, 1 << 20])
def test_lines_are_the_same_whatever_the_chunk_size(chunk_size: int) -> None:
    lines = list(scan_lines(io.BytesIO(DATA), keep=1000, chunk_size=chunk_size))
    expected = DATA.split(b"\n")
    assert [line.data for line in lines] == [row.rstrip(b"\r") for row in expected]
    assert [line.blank for line in lines] == [not row.strip() for row in expected]
    assert sum(line.size for line in lines) == len(DATA) and all(line.whole for line in lines)


@pytest.mark.parametrize("chunk_size", [5, 1 << 20])
def test_a_line_over_keep_yields_only_its_start(chunk_size: int) -> None:
    long_line = b'{"pad": "' + b"y" * 5000 + b'"}'
    data = b"short\n" + long_line + b"\r\nafter\n"
    lines = list(scan_lines(io.BytesIO(data), keep=100, chunk_size=chunk_size))
    assert [line.whole for line in lines] == [True, False, True]
    assert lines[1].data == long_line[:PREFIX] and lines[1].size == len(long_line) + 2
    assert (lines[0].data, lines[2].data) == (b"short", b"after")


def test_the_batch_reader_stops_at_its_byte_budget() -> None:
    data = b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"z" * 1000) for i in range(10))
    reader = LineReader(io.BytesIO(data), 0, 0, max_line_bytes=1 << 20)
    first = reader.read(100, max_bytes=2500)
    assert len(first) == 3  # the line that reaches the budget is the last one read
    rest = reader.read(100)
    assert [line.number for line in first + rest] == list(range(1, 11))
    assert rest[-1].end_offset == len(data)


def test_an_upload_line_over_the_sniff_size_is_judged_by_its_start() -> None:
    # Not parsed (that would hold the GIL for the whole line); a malformed one is its own error
    # row when a batch runs it.
    huge = b'{"custom_id": "x", "pad": "' + b"p" * SNIFF_PARSE_BYTES
    assert check_jsonl(io.BytesIO(huge + b"\n"), 1 << 30) == (len(huge) + 1, 1)
    with pytest.raises(InvalidRequest):
        check_jsonl(io.BytesIO(b"[" + huge[1:] + b"\n"), 1 << 30)


def test_a_character_split_across_two_chunks_is_valid_utf8() -> None:
    head = b'{"a": "'
    data = head + b"x" * (CHUNK - len(head) - 1) + "é".encode() + b'"}\n'
    assert check_jsonl(io.BytesIO(data), 1 << 30) == (len(data), 1)
    with pytest.raises(InvalidRequest) as err:
        check_jsonl(io.BytesIO(data[:-4]), 1 << 30)  # ends inside the character
    assert err.value.code == "invalid_file"
