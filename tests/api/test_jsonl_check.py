"""What an uploaded batch file must be (pure rule: JSON Lines, UTF-8, not empty, not too big)."""

from __future__ import annotations

import io

import pytest

# --- the module under test (moves with the files slice) ---------------------------------------
from api.files.service import SNIFF_LINES, check_jsonl
from shared.errors import InvalidRequest, PayloadTooLarge


def check(data: bytes, max_bytes: int = 1 << 20) -> tuple[int, int]:
    return check_jsonl(io.BytesIO(data), max_bytes)


def test_size_and_non_blank_lines() -> None:
    data = b'{"custom_id": "a"}\n\n  \n{"custom_id": "b"}\n'
    assert check(data) == (len(data), 2)


def test_lines_that_are_not_json_are_allowed_when_some_are_objects() -> None:
    # They become error lines of the batch, not a refused upload.
    assert check(b'{"custom_id": "a"}\nnot json\n[1]\n') == (len(b'{"custom_id": "a"}\nnot json\n[1]\n'), 3)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(b"", "empty_file", id="empty"),
        pytest.param(b"\n \n\t\n", "empty_file", id="blank"),
        pytest.param(b"a,b\n1,2\n", "invalid_file", id="csv"),
        pytest.param(b"[1]\n[2]\n", "invalid_file", id="arrays"),
        pytest.param(b'{"a": 1}\n\xff\xfe\n', "invalid_file", id="not-utf8"),
    ],
)
def test_refused_uploads(data: bytes, code: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        check(data)
    assert err.value.code == code and err.value.param == "file"


def test_only_the_first_lines_are_sniffed_for_objects() -> None:
    junk = b"junk\n" * SNIFF_LINES
    with pytest.raises(InvalidRequest):
        check(junk + b'{"custom_id": "late"}\n')
    assert check(junk[:-5] + b'{"custom_id": "in time"}\n')[1] == SNIFF_LINES


def test_over_the_size_limit_is_413_without_reading_further() -> None:
    class Endless(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            line = b'{"custom_id": "x"}\n'
            buffer[: len(line)] = line
            return len(line)

    with pytest.raises(PayloadTooLarge) as err:
        check_jsonl(io.BufferedReader(Endless()), 10_000)  # type: ignore[arg-type]
    assert err.value.status_code == 413 and err.value.param == "file"
