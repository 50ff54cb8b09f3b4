"""Redis clients for every process, from one description of where Redis is: a URL, or Sentinel.

With Sentinel (`REDIS_SENTINELS`), a client asks the sentinels for the current primary of
`REDIS_SENTINEL_MASTER` and asks again after a connection error, so API, workers, janitor and
feeder all follow a failover without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.asyncio import BlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelManagedConnection
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.sentinel import Sentinel, SentinelManagedConnection

DEFAULT_SENTINEL_PORT = 26379


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` (port defaults to 26379; `[v6]:port` for IPv6) as address pairs."""
    found = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":") if not item.endswith("]") else (item, "", "")
        if not sep:
            host, port = item, str(DEFAULT_SENTINEL_PORT)
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not a sentinel address (host:port): {item!r}")
        found.append((host, int(port)))
    return tuple(found)


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is. `url` always names the database and credentials; with `sentinels`, its host
    is ignored and the primary of `master` is looked up instead."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = "mymaster"
    sentinel_password: str | None = None
    password: str | None = None  # the data nodes' password, when not in the URL

    @property
    def uses_sentinel(self) -> bool:
        return bool(self.sentinels)

    @classmethod
    def from_settings(cls, settings: Any) -> RedisTarget:
        return cls(
            url=settings.redis_url,
            sentinels=parse_sentinels(getattr(settings, "redis_sentinels", "") or ""),
            master=getattr(settings, "redis_sentinel_master", "") or "mymaster",
            sentinel_password=getattr(settings, "redis_sentinel_password", "") or None,
            password=getattr(settings, "redis_password", "") or None,
        )

    def _node_options(self) -> dict[str, Any]:
        """Database and credentials from the URL, for connections to whichever node is primary."""
        parsed = parse_url(self.url)  # type: ignore[no-untyped-call]
        chosen = {k: parsed[k] for k in ("db", "username", "password") if parsed.get(k) is not None}
        return {**chosen, **self._password()}

    def _password(self) -> dict[str, Any]:
        return {"password": self.password} if self.password else {}

    def _sentinel_options(self, options: dict[str, Any]) -> dict[str, Any]:
        # Sentinels are asked with the same deadlines as the data nodes, so a dead sentinel is
        # skipped quickly; they have their own password, if any.
        keep = ("socket_timeout", "socket_connect_timeout")
        chosen = {k: options[k] for k in keep if options.get(k) is not None}
        if self.sentinel_password:
            chosen["password"] = self.sentinel_password
        return chosen


class _DisconnectingSentinelConnection(SentinelManagedConnection):
    """redis-py's sync Sentinel connection, unlike a plain one, stays connected when a read is
    interrupted (an exception raised by a signal handler, such as rq's stop request, mid-reply),
    so the next command on it would read the stale reply ("Wrong number of response items").
    Disconnect instead, as a plain connection does."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("disconnect_on_error", True)
        return super().read_response(*args, **kwargs)


def sync_client(target: RedisTarget, **options: Any) -> Redis:
    """A client for the primary; `options` are redis-py's (timeouts, retry, ...)."""
    if not target.sentinels:
        return Redis.from_url(target.url, **{**options, **target._password()})
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=target._sentinel_options(options))  # type: ignore[no-untyped-call]
    node = {**target._node_options(), "connection_class": _DisconnectingSentinelConnection, **options}
    client: Redis = sentinel.master_for(target.master, **node)  # type: ignore[no-untyped-call]
    return client


class _AsyncSentinelConnection(AsyncSentinelManagedConnection):
    """uvloop (the API's loop) raises RuntimeError, not an OSError, when a write meets a transport
    that closed under it: a primary killed between our connect and its HELLO, or while a command
    was on its way. redis-py has already dropped the connection then; calling it the connection
    error it is lets the client's retry reach the new primary, and the API answer 503, not 500."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as exc:
            raise RedisConnectionError(f"Connection lost while writing to socket ({exc}).") from exc


class _BlockingSentinelPool(AsyncSentinelPool, BlockingConnectionPool):
    """Sentinel's pool (asks for the primary, drops connections to an old one) that waits for a
    free connection like BlockingConnectionPool instead of failing when all are in use."""


def async_client(target: RedisTarget, *, blocking_pool: bool = False, **options: Any) -> AsyncRedis:
    """The asyncio twin of `sync_client`. `blocking_pool`: a full pool (`max_connections`) makes
    a caller wait up to `timeout` seconds for a connection instead of failing at once."""
    if not target.sentinels:
        options = {**options, **target._password()}
        if blocking_pool:
            return AsyncRedis(connection_pool=BlockingConnectionPool.from_url(target.url, **options))
        return AsyncRedis.from_url(target.url, **options)
    sentinel = AsyncSentinel(list(target.sentinels), sentinel_kwargs=target._sentinel_options(options))  # type: ignore[no-untyped-call]
    pool_class = _BlockingSentinelPool if blocking_pool else AsyncSentinelPool
    node = {**target._node_options(), "connection_class": _AsyncSentinelConnection, **options}
    client: AsyncRedis = sentinel.master_for(target.master, connection_pool_class=pool_class, **node)
    return client
