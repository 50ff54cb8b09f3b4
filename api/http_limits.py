"""What one connection or one body may cost the event loop, enforced before any handler runs.

Bodies: JSON decoding holds the GIL (msgspec and Litestar's decoder are C code that never yield
it), so a body of a million tiny values stalls every request for about a second even when decoded
in a thread. Its values are counted first, as it arrives, with three byte counts per chunk (an
overestimate: brackets and commas inside strings count too), and a body over MAX_JSON_ITEMS is
refused before it is decoded.

Connections: uvicorn closes idle keep-alive connections and caps concurrency (503), but has no
deadline for a request's headers, so a client sending half a header line holds a connection
forever (slowloris). The protocol classes below add one; production should still sit behind a
reverse proxy (README).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from litestar import Request
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.errors import InvalidRequest

DEFAULT_HEADER_TIMEOUT_S = 10.0
_NOT_JSON = ("multipart/", "application/x-www-form-urlencoded")


def json_items(body: bytes) -> int:
    """An upper bound on the values a JSON document holds: the document itself, plus per
    container its first value (counted by its bracket) and one more per comma."""
    return 1 + body.count(b"{") + body.count(b"[") + body.count(b",")


class BoundedJSONRequest(Request[Any, Any, Any]):
    """The app's request class: a JSON body is refused once it holds more values than
    MAX_JSON_ITEMS, counted chunk by chunk as it arrives (so the count never holds the loop and
    the rest of such a body is never read, joined or decoded)."""

    async def stream(self) -> AsyncGenerator[bytes, None]:
        limit = self.app.state.settings.max_json_items
        # Uploads are multipart files, not JSON values (their lines are checked on their own).
        counted = not self.headers.get("content-type", "").startswith(_NOT_JSON)
        items = 1
        async for chunk in super().stream():
            if counted:
                items += json_items(chunk) - 1
                if items > limit:
                    raise InvalidRequest(
                        f"the request body holds more than {limit} JSON values (MAX_JSON_ITEMS)",
                        code="too_many_json_items",
                    )
            yield chunk


class _HeaderDeadline:
    """Closes a connection whose request headers are not complete `header_timeout_s` after it
    opened, or after the first byte of a later request on a kept-alive connection.

    Mixed into uvicorn's protocols; `cycle` is theirs: a new one exists once headers are parsed
    (the 503 of `limit_concurrency` included)."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)  # type: ignore[call-arg]
        self.header_timeout_s = float(getattr(config, "header_timeout_s", DEFAULT_HEADER_TIMEOUT_S))
        self._header_timer: asyncio.TimerHandle | None = None
        self._awaited_after: Any = None

    def _arm(self) -> None:
        self._awaited_after = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)  # type: ignore[misc]
        if self._header_timer is not None and self.cycle is not self._awaited_after:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]


class DeadlineH11Protocol(_HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol with a header deadline."""


class DeadlineHttpToolsProtocol(_HeaderDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline."""
