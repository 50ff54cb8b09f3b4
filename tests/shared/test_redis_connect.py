"""Clients from one description of Redis: a URL, or Sentinel that they follow through a failover
(real redis-server primary, replica and three sentinels; the primary is SIGKILLed)."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Iterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.redis_connect import RedisTarget, _AsyncSentinelConnection, async_client, parse_sentinels, sync_client
from tests.support.procs import RedisServer, wait_for
from tests.support.sentinel import MASTER, SentinelCluster, start_sentinel_cluster


def test_parse_sentinels() -> None:
    assert parse_sentinels("a:1, b:26380,") == (("a", 1), ("b", 26380))
    assert parse_sentinels("redis-sentinel") == (("redis-sentinel", 26379),)
    assert parse_sentinels("[::1]:5000,[fe80::1]") == (("::1", 5000), ("fe80::1", 26379))
    assert parse_sentinels("") == ()
    for bad in ("a:b", "a:0", "a:70000", ":1"):
        with pytest.raises(ValueError, match="sentinel address"):
            parse_sentinels(bad)


def test_a_plain_url_is_used_as_it_is(redis_server: RedisServer) -> None:
    client = sync_client(RedisTarget(redis_server.url(db=3)), socket_timeout=2)
    client.set("omega:test:plain", "1")
    assert redis_server.client(db=3).get("omega:test:plain") == b"1"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SentinelCluster]:
    cluster = start_sentinel_cluster(replicas=1)
    yield cluster
    cluster.stop()


def _retrying(step, what: str):  # type: ignore[no-untyped-def]
    """Run `step` until it succeeds: during a failover calls fail until a primary is elected."""
    result = []

    def attempt() -> bool:
        try:
            result.append(step())
            return True
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return False

    wait_for(attempt, 30, what, interval=0.2)
    return result[0]


@pytest.mark.slow
def test_clients_follow_a_sentinel_failover(cluster: SentinelCluster) -> None:
    target = RedisTarget("redis://127.0.0.1:1/5", sentinels=parse_sentinels(cluster.sentinels), master=MASTER)
    options = {"socket_timeout": 1, "socket_connect_timeout": 1}
    client = sync_client(target, **options)
    aclient = async_client(target, **options)
    client.set("omega:test:before", "1")
    assert client.connection_pool.connection_kwargs["db"] == 5  # the URL names the database
    old = cluster.kill_primary()
    new = cluster.wait_failover(old)
    # The same client objects, not new ones: they ask the sentinels again after the error.
    _retrying(lambda: client.set("omega:test:after", "2"), "a write through the failed-over client")
    assert client.get("omega:test:before") == b"1"  # replicated before the primary died

    async def async_side() -> bytes | None:
        for _ in range(150):
            try:
                await aclient.set("omega:test:async", "3")
                return await aclient.get("omega:test:after")
            except (RedisConnectionError, RedisTimeoutError, OSError):
                await asyncio.sleep(0.2)
        raise AssertionError("the async client never reached the new primary")

    assert asyncio.run(async_side()) == b"2"
    from redis import Redis

    assert Redis(port=new, db=5).get("omega:test:async") == b"3"


def test_settings_describe_the_sentinel_target() -> None:
    from shared.settings_sources import SettingsError, load_settings

    env = {"REDIS_URL": "redis://unused:1/3", "REDIS_SENTINELS": "a:1,b", "REDIS_SENTINEL_MASTER": "m"}
    settings = load_settings(environ={**env, "REDIS_PASSWORD": "node-secret", "REDIS_SENTINEL_PASSWORD": "s-secret"})
    target = RedisTarget.from_settings(settings)
    assert target.sentinels == (("a", 1), ("b", 26379)) and target.master == "m"
    assert target._node_options() == {"db": 3, "password": "node-secret"}
    assert target._sentinel_options({})["password"] == "s-secret"
    assert "node-secret" not in repr(settings) and "s-secret" not in repr(settings)
    # A job waits for one replica with sentinels, none without, unless told otherwise.
    assert settings.wait_replicas == 1 and load_settings(environ={}).wait_replicas == 0
    assert load_settings(environ={**env, "REDIS_WAIT_REPLICAS": "2"}).wait_replicas == 2
    with pytest.raises(SettingsError, match="REDIS_SENTINELS"):
        load_settings(environ={"REDIS_SENTINELS": "a:b"})


def test_a_write_on_a_transport_closed_under_it_is_a_connection_error(redis_server: RedisServer) -> None:
    """Under uvloop (the API's loop) a write on a transport that closed under the connection
    (the primary died between connect and HELLO, or mid-command) raised RuntimeError, which the
    API answered 500 during a failover; it is a connection error (the client retries, the API
    answers 503)."""
    uvloop = pytest.importorskip("uvloop")

    async def write_after_the_peer_went() -> None:
        conn = _AsyncSentinelConnection(connection_pool=types.SimpleNamespace(check_connection=False))
        await conn.connect_to(("127.0.0.1", redis_server.port))  # the address the sentinels named
        await conn.send_command("PING")
        assert await conn.read_response() == b"PONG"
        conn._writer.transport.abort()  # as a reset from the dying primary does
        await asyncio.sleep(0.05)  # uvloop closes its handle
        with pytest.raises(RedisConnectionError, match="Connection lost while writing"):
            await conn.send_command("PING")

    uvloop.run(write_after_the_peer_went())
