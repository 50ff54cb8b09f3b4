"""API key guard: `Authorization: Bearer KEY` when API_KEY is set (constant-time compare)."""

from __future__ import annotations

import hmac

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from shared.errors import Unauthorized
from shared.settings import Settings


def check_bearer(settings: Settings, authorization: str | None) -> None:
    if not settings.api_key:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <API_KEY>'")
    if not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
        raise Unauthorized("invalid API key")


async def require_api_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    # async on purpose: Litestar runs a synchronous guard in a worker thread, a thread hop on
    # every request for a string comparison.
    check_bearer(connection.app.state.settings, connection.headers.get("authorization"))
