"""`omega-vlm up` uses the configured Redis when it answers, else starts a private redis-server
(never with Sentinel: a Sentinel deployment is the operator's, and a private primary would split it)."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

from redis.exceptions import RedisError

from shared.redis_connect import RedisTarget, sync_client

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}


class RedisUnavailable(RuntimeError):
    pass


def reachable(target: RedisTarget, timeout_s: float = 1.0) -> bool:
    """Whether Redis (with Sentinel: the current primary) answers a PING."""
    try:
        client = sync_client(target, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (RedisError, OSError, ValueError):
        return False


def needs_private_redis(target: RedisTarget) -> bool:
    """Whether `up` starts its own redis-server: only for a plain REDIS_URL that does not answer.
    With sentinels never (the processes wait for a primary instead)."""
    return not target.uses_sentinel and not reachable(target)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RedisUnavailable(
            "REDIS_URL is not reachable and redis-server is not installed: install it with "
            "`sudo apt-get install -y redis-server` (Debian/Ubuntu), or point REDIS_URL at a running Redis"
        )
    return path


def private_redis_plan(url: str, data_dir: Path, maxmemory: str = "2gb") -> tuple[list[str], str]:
    """(argv, url) of a private redis-server for a local REDIS_URL that does not answer.

    `maxmemory` (REDIS_MAXMEMORY) with `noeviction`: a full Redis refuses writes (the API answers
    503) instead of growing without bound or evicting jobs and results."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or (parts.hostname or "") not in LOCAL_HOSTS:
        raise RedisUnavailable(f"REDIS_URL ({parts.scheme}://{parts.hostname}:{parts.port}) is not reachable")
    port = parts.port or 6379
    if not port_free(port):
        port = free_port()
    directory = data_dir / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    # Append-only persistence: jobs accepted before a restart are still there after it.
    argv = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(directory.resolve()),
        "--appendonly",
        "yes",
        "--appendfsync",  # on disk before Redis answers: an accepted job survives a crash
        "always",
        "--save",
        "",
        "--protected-mode",
        "yes",
        "--loglevel",
        "warning",
        "--maxmemory",
        maxmemory,
        "--maxmemory-policy",
        "noeviction",
    ]
    db = parts.path.lstrip("/") or "0"
    return argv, f"redis://127.0.0.1:{port}/{db}"


def wait_until_reachable(url: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if reachable(RedisTarget(url), 0.5):
            return
        time.sleep(0.1)
    raise RedisUnavailable(f"the private redis-server did not start within {timeout_s:g} s")
