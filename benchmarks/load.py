"""A lean HTTP/1.1 load generator for the benchmarks: asyncio, keep-alive connections, raw bytes.

The benchmarks run their clients on the same two cores as the service. A general-purpose client
such as httpx spends several milliseconds of CPU per request in Python, so at a few hundred
requests per second the load generator itself takes most of a core and slows the service it is
measuring. Like wrk or hey, this client does as little as possible: it writes a prepared request
and reads the response by Content-Length. It speaks only what the benchmarks need (POST with a
JSON body, answered with a Content-Length body).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgspec

try:  # uvicorn[standard] brings uvloop; the plain loop works too
    import uvloop

    _run = uvloop.run
except ImportError:  # pragma: no cover
    _run = asyncio.run


# The first SSE chunk that carries generated text (a role-only chunk has "content":"" or null).
_CONTENT = re.compile(rb'"content": ?"[^"]')


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    seconds: float

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


@dataclass(frozen=True)
class Streamed:
    status: int
    body: bytes  # the event stream as received
    first_content: float | None  # seconds to the first chunk with generated text
    seconds: float


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host

    @classmethod
    async def open(cls, url: str) -> Connection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80, limit=2**22)
        return cls(reader, writer, parts.netloc)

    async def _send(self, path: str, body: bytes) -> tuple[int, dict[str, str]]:
        """POST `body`; the answer's status and headers (names lower-cased)."""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        return status, headers

    async def post(self, path: str, body: bytes) -> Reply:
        started = time.perf_counter()
        status, headers = await self._send(path, body)
        payload = await self.reader.readexactly(int(headers["content-length"]))
        return Reply(status, payload, time.perf_counter() - started)

    async def stream(self, path: str, body: bytes) -> Streamed:
        """POST a streaming request and read its chunked SSE answer to the end, noting when the
        first chunk with generated text arrived."""
        started = time.perf_counter()
        status, headers = await self._send(path, body)
        if headers.get("transfer-encoding", "").lower() != "chunked":  # an error answer, not a stream
            payload = await self.reader.readexactly(int(headers.get("content-length", "0")))
            return Streamed(status, payload, None, time.perf_counter() - started)
        first: float | None = None
        received = bytearray()
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")  # the empty trailer
                break
            received += (await self.reader.readexactly(size + 2))[:-2]
            if first is None and _CONTENT.search(received):
                first = time.perf_counter() - started
        return Streamed(status, bytes(received), first, time.perf_counter() - started)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def sequential(url: str, path: str, bodies: Sequence[dict[str, Any]]) -> list[Reply]:
    """One request after another on one keep-alive connection."""

    async def go() -> list[Reply]:
        conn = await Connection.open(url)
        try:
            return [await conn.post(path, msgspec.json.encode(body)) for body in bodies]
        finally:
            await conn.close()

    return _run(go())


def concurrent(
    url: str, path: str, total: int, clients: int, make: Callable[[int], dict[str, Any]]
) -> tuple[float, list[Reply]]:
    """(wall seconds, replies in request order): `clients` connections sending `total` requests
    back to back, each client taking the next request as soon as its previous one is answered."""
    bodies = [msgspec.json.encode(make(i)) for i in range(total)]  # encoded before the clock starts
    replies: list[Reply | None] = [None] * total
    pending = iter(range(total))

    async def client() -> None:
        conn = await Connection.open(url)
        try:
            for i in pending:
                replies[i] = await conn.post(path, bodies[i])
        finally:
            await conn.close()

    async def go() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - started

    wall = _run(go())
    return wall, [r for r in replies if r is not None]
