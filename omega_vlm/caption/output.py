"""The output file: one row per image, appended and flushed as each finishes, resumable.

On start the existing file is read: a torn last line (the process died mid-write) is cut off,
and every image with a caption, or with an error that retrying cannot fix, counts as done.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
from pathlib import Path
from typing import IO, Any, Literal

Format = Literal["jsonl", "csv"]
CSV_FIELDS = [
    "image",
    "caption",
    "error",
    "error_code",
    "status",
    "job_id",
    "model",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "retryable",
]


TERMINATORS = {"jsonl": b"\n", "csv": b"\r\n"}  # CSV captions keep bare newlines inside quotes


class OutputBusy(Exception):
    """Another run holds the output file: two runs appending to one file would duplicate rows."""


def lock_output(path: Path) -> IO[bytes]:
    """An exclusive flock on the output file, held while the returned file stays open.

    The kernel drops it when the process dies, so a killed run never leaves a stale lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OutputBusy(f"another caption run is writing to {path}; wait for it or choose another --out") from None
    return handle


def repair_torn_tail(path: Path, fmt: Format = "jsonl") -> int:
    """Cut a partial last row; returns how many bytes were dropped."""
    end_of_row = TERMINATORS[fmt]
    if not path.exists() or path.stat().st_size == 0:
        return 0
    data_size = path.stat().st_size
    with path.open("rb+") as f:
        f.seek(max(0, data_size - len(end_of_row)))
        if f.read() == end_of_row:
            return 0
        # Rows are small next to memory, but read backwards in blocks anyway.
        end, block = data_size, 1 << 16
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(min(data_size, end + len(end_of_row)) - start)
            cut = chunk.rfind(end_of_row)
            if cut >= 0:
                keep = start + cut + len(end_of_row)
                f.truncate(keep)
                return data_size - keep
            end = start
        f.truncate(0)
        return data_size


def _done(row: dict[str, Any]) -> bool:
    if row.get("caption") not in (None, ""):
        return True
    return bool(row.get("error")) and not _retryable(row)


def _retryable(row: dict[str, Any]) -> bool:
    value = row.get("retryable")
    return value in (True, "True", "true", "1")


def read_progress(path: Path, fmt: Format) -> tuple[set[str], dict[str, int]]:
    """(images an earlier run finished, attempts so far of the ones to retry)."""
    done: set[str] = set()
    attempts: dict[str, int] = {}
    if not path.exists():
        return done, attempts
    with path.open(encoding="utf-8", newline="") as f:
        rows: Any = csv.DictReader(f) if fmt == "csv" else (json.loads(line) for line in f if line.strip())
        for row in rows:
            if not isinstance(row, dict) or not row.get("image"):
                continue
            image = str(row["image"])
            if _done(row):
                done.add(image)
            else:
                attempts[image] = attempts.get(image, 0) + 1
    return done, {k: v for k, v in attempts.items() if k not in done}


class RowWriter:
    def __init__(self, path: Path, fmt: Format) -> None:
        self.path = path
        self.fmt = fmt
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", encoding="utf-8", newline="")
        if fmt == "csv" and new:
            self._write_csv_header()

    def _write_csv_header(self) -> None:
        csv.writer(self._file).writerow(CSV_FIELDS)
        self._flush()

    def write(self, row: dict[str, Any]) -> None:
        """One complete row per write call, flushed to the OS: a crash loses only rows in flight."""
        if self.fmt == "jsonl":
            text = json.dumps(row, ensure_ascii=False) + "\n"
        else:
            buf = io.StringIO()
            error = row.get("error") or {}
            if isinstance(row.get("caption"), str):  # keep "\r\n" for the end of rows only
                row = {**row, "caption": row["caption"].replace("\r\n", "\n")}
            flat = {
                **{k: row.get(k, "") for k in CSV_FIELDS},
                "error": error.get("message", ""),
                "error_code": error.get("code", ""),
                "status": error.get("status", ""),
                "retryable": row.get("retryable", ""),
            }
            csv.DictWriter(buf, fieldnames=CSV_FIELDS).writerow(flat)
            text = buf.getvalue()
        self._file.write(text)
        self._flush()

    def _flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
