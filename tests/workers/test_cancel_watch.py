"""The worker's cancellation watch on a real Redis: requests reach the runner within a period,
only for the batch being watched, and a Redis outage does not stop the watch."""

from __future__ import annotations

import threading
import time

from redis import Redis

from shared import keys
from tests.support.procs import RedisServer
from workers.cancel_watch import CancelWatch


class Seen:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.arrived = threading.Event()

    def __call__(self, ids: list[str]) -> None:
        self.calls.append(ids)
        self.arrived.set()


def test_a_cancel_request_reaches_the_runner_while_its_batch_runs(redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_server.url(15))  # the e2e stacks count up from db 0
    redis.delete(keys.CANCEL_REQUESTS)
    seen = Seen()
    watch = CancelWatch(redis, seen, period_s=0.01)
    with watch.watching(["a", "b", "c"]):
        time.sleep(0.05)
        assert seen.calls == []  # nothing asked yet
        redis.zadd(keys.CANCEL_REQUESTS, {"b": time.time(), "unrelated": time.time()})
        assert seen.arrived.wait(5)
        time.sleep(0.05)  # later checks must not pass "b" on again
    assert seen.calls == [["b"]]

    # The next batch is watched by the same thread; requests for the last batch are not its concern.
    seen.arrived.clear()
    with watch.watching(["d"]):
        time.sleep(0.05)
        redis.zadd(keys.CANCEL_REQUESTS, {"d": time.time()})
        assert seen.arrived.wait(5)
    assert seen.calls == [["b"], ["d"]]

    # Between batches nothing is watched: a request then is not passed on.
    redis.zadd(keys.CANCEL_REQUESTS, {"a": time.time()})
    time.sleep(0.1)
    assert seen.calls == [["b"], ["d"]]
    assert sum(t.name == "cancel-watch" for t in threading.enumerate()) >= 1


def test_the_watch_survives_redis_errors() -> None:
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.05)
    seen = Seen()
    watch = CancelWatch(dead, seen, period_s=0.01)
    with watch.watching(["a"]):
        time.sleep(0.2)
    assert seen.calls == []
    assert watch._thread is not None and watch._thread.is_alive()
