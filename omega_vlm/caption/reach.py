"""Before any work: is --server a usable URL, and does anything listen there? Answered in seconds."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 5.0


class ServerUnreachable(Exception):
    """The server URL is malformed or nothing accepts connections there; the message says which."""


def check_server(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A TCP connect only (no request is sent, so nothing on the server is counted or retried)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ServerUnreachable(f"--server {url!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerUnreachable(f"--server {url!r} needs a scheme and a host, e.g. http://localhost:8000")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            pass
    except TimeoutError:
        raise ServerUnreachable(f"cannot reach the server at {url}: no answer within {timeout_s:g} s") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ServerUnreachable(f"cannot reach the server at {url}: {reason}") from None
