"""Redis replies as text: clients may be set to return bytes or str, and keys may be missing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def text(value: Any) -> str:
    """One reply value as str (bytes decoded as UTF-8)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def text_or_none(value: Any) -> str | None:
    """`text`, keeping a missing value (nil reply) as None."""
    return None if value is None else text(value)


def texts(values: Iterable[Any]) -> list[str]:
    """A list or set reply as a list of str."""
    return [text(v) for v in values]
