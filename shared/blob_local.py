"""Blob store on a local directory: the embedded default for one machine."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from shared.blobstore import BlobNotFound, BlobStoreUnavailable


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        # Keys are built by the service, but a key must never escape the root whatever it holds.
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or key.startswith("/"):
            raise ValueError(f"invalid blob key: {key!r}")
        return self.root.joinpath(*parts)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda f: f.write(data))

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        self._write(key, lambda f: shutil.copyfileobj(stream, f, 1024 * 1024))

    def _write(self, key: str, fill: Callable[[BinaryIO], object]) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write-then-rename: a reader never sees a half-written blob.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    fill(f)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise BlobStoreUnavailable("blob store is not writable") from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {key!r} not found") from None
        except OSError as exc:
            raise BlobStoreUnavailable("blob store is not readable") from exc

    def open_stream(self, key: str, offset: int = 0) -> BinaryIO:
        try:
            stream = self._path(key).open("rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {key!r} not found") from None
        stream.seek(offset)
        return stream

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BlobStoreUnavailable("blob store directory is not usable") from exc
        if not os.access(self.root, os.W_OK):
            raise BlobStoreUnavailable("blob store directory is not writable")
