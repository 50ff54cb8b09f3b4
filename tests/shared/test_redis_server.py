"""`up` uses a reachable REDIS_URL, else plans a private redis-server (or says how to install one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from omega_vlm import redis_server
from omega_vlm import redis_server as up_redis
from shared.redis_connect import RedisTarget
from tests.support.procs import RedisServer


def test_reachable(redis_server: RedisServer) -> None:
    assert redis_server_reachable(redis_server.url())
    assert not redis_server_reachable("redis://127.0.0.1:1/0")


def test_a_private_redis_only_for_a_plain_url_that_does_not_answer(redis_server: RedisServer) -> None:
    needs = up_redis.needs_private_redis
    assert needs(RedisTarget("redis://127.0.0.1:1/0"))
    assert not needs(RedisTarget(redis_server.url()))
    # With sentinels, never: a private primary beside a Sentinel deployment would split it.
    assert not needs(RedisTarget("redis://127.0.0.1:1/0", sentinels=(("127.0.0.1", 1),)))


def redis_server_reachable(url: str) -> bool:
    return redis_server.reachable(RedisTarget(url), timeout_s=0.5)


def test_private_plan_uses_append_only_persistence(tmp_path: Path) -> None:
    argv, url = redis_server.private_redis_plan("redis://localhost:6399/2", tmp_path)
    assert url.endswith("/2") and "--appendonly" in argv and argv[argv.index("--appendonly") + 1] == "yes"
    assert (tmp_path / "redis").is_dir()


def test_private_plan_caps_memory_without_eviction(tmp_path: Path) -> None:
    argv, _ = redis_server.private_redis_plan("redis://localhost:6399/0", tmp_path, "512mb")
    assert argv[argv.index("--maxmemory") + 1] == "512mb"
    assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction"


def test_remote_url_is_not_replaced(tmp_path: Path) -> None:
    with pytest.raises(redis_server.RedisUnavailable):
        redis_server.private_redis_plan("redis://redis.example.com:6379/0", tmp_path)


def test_missing_binary_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(redis_server.RedisUnavailable) as err:
        redis_server.private_redis_plan("redis://127.0.0.1:6399/0", tmp_path)
    assert "apt-get install -y redis-server" in str(err.value)
