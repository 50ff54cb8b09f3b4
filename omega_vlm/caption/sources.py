"""What to caption: image files, folders, globs, URLs, and manifest files listing any of those."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif", ".webp": "image/webp"}


@dataclass(frozen=True)
class ImageSource:
    """One image: `key` is what output rows name it by and resume matches on: the URL, or the path
    as given (normalised, never resolved), so relative inputs stay relative and a folder moved
    together with its output file still resumes."""

    key: str
    is_url: bool

    @property
    def mime(self) -> str:
        return MIME.get(Path(self.key).suffix.lower(), "application/octet-stream")


def _key(path: Path | str) -> str:
    """'./a/../b.png' -> 'b.png'; symlinks are not followed (that would pin the old location)."""
    return os.path.normpath(path)


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _folder(path: Path, recursive: bool) -> Iterator[Path]:
    found = path.rglob("*") if recursive else path.glob("*")
    yield from sorted(p for p in found if p.is_file() and _is_image(p))


def _manifest(path: Path, recursive: bool) -> Iterator[ImageSource]:
    """One path or URL per line; blank lines and # comments skipped; paths relative to the manifest."""
    for raw in path.read_text(encoding="utf-8").splitlines():
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        if _is_url(entry):
            yield ImageSource(entry, True)
            continue
        target = Path(entry).expanduser()
        yield from expand([str(target if target.is_absolute() else path.parent / target)], recursive)


def expand(inputs: Iterable[str], recursive: bool) -> Iterator[ImageSource]:
    for item in inputs:
        if _is_url(item):
            yield ImageSource(item, True)
            continue
        path = Path(item).expanduser()
        if path.is_dir():
            yield from (ImageSource(_key(p), False) for p in _folder(path, recursive))
        elif path.is_file() and _is_image(path):
            yield ImageSource(_key(path), False)
        elif path.is_file():
            yield from _manifest(path, recursive)
        elif glob.has_magic(item):
            for match in sorted(glob.glob(str(path), recursive=recursive)):
                matched = Path(match)
                if matched.is_file() and _is_image(matched):
                    yield ImageSource(_key(matched), False)
        else:
            raise FileNotFoundError(f"no such file, folder or URL: {item}")


def collect(inputs: Iterable[str], recursive: bool) -> list[ImageSource]:
    """Every image once, in the order given."""
    return list(dict.fromkeys(expand(inputs, recursive)))
