"""The worker's cancellation watch on a real Redis: requests reach the runner within a period."""

from __future__ import annotations

import threading
import time

from redis import Redis

from shared import keys
from tests.support.procs import RedisServer
from workers.cancel_watch import CancelWatch


def test_a_cancel_request_reaches_the_runner_while_the_batch_runs(redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_server.url(15))  # stacks count up from db 0
    redis.delete(keys.CANCEL_REQUESTS)
    seen: list[list[str]] = []
    arrived = threading.Event()

    def on_cancel(ids: list[str]) -> None:
        seen.append(ids)
        arrived.set()

    watch = CancelWatch(redis, on_cancel, period_s=0.01)
    with watch.watching(["a", "b", "c"]):
        time.sleep(0.05)
        assert seen == []  # nothing asked yet
        redis.zadd(keys.CANCEL_REQUESTS, {"b": time.time(), "unrelated": time.time()})
        assert arrived.wait(5)
        time.sleep(0.05)  # later checks must not pass "b" on again
    assert seen == [["b"]]


def test_the_watch_ends_with_the_batch_and_survives_redis_errors() -> None:
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.05)
    seen: list[list[str]] = []
    watch = CancelWatch(dead, seen.append, period_s=0.01)
    with watch.watching(["a"]):
        time.sleep(0.1)
    assert seen == []
    # A check in progress may still be retrying the connection; after it the thread ends.
    deadline = time.monotonic() + 10
    while any(t.name == "cancel-watch" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "cancel-watch" for t in threading.enumerate())
