"""A worker's membership in the fleet: its WorkerInfo, renewed by a heartbeat thread.

The record expires WORKER_TTL_S after the last beat, so a killed worker disappears from routing
and from /health by itself. The same thread keeps rq's heartbeats of the jobs in flight alive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
from redis import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.fleet import WorkerInfo, encode_info

log = logging.getLogger("omega.worker.fleet")


class FleetMember:
    def __init__(
        self,
        redis: Redis,
        info: WorkerInfo,
        *,
        period_s: float,
        ttl_s: float,
        on_beat: Callable[[], None] | None = None,
        metrics: Callable[[], bytes] | None = None,
    ) -> None:
        self.redis = redis
        self.info = info
        self.period_s = period_s
        self.ttl_s = ttl_s
        self.on_beat = on_beat
        self.metrics = metrics
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-heartbeat", daemon=True)

    def update(self, **changes: Any) -> None:
        """Change the record (state, model, error) and publish it at once."""
        with self._lock:
            self.info = msgspec.structs.replace(self.info, **changes)
        self.beat()

    def record_micro_batch(self, seconds: float) -> None:
        """Fold one micro-batch's wall time into the moving average the API's wait estimates use."""
        with self._lock:
            old = self.info.avg_batch_seconds
            avg = seconds if old == 0 else 0.8 * old + 0.2 * seconds
            self.info = msgspec.structs.replace(self.info, avg_batch_seconds=round(avg, 4))

    def set_load(self, running: int, free_slots: int, kv_tokens: int) -> None:
        """The continuous engine's load, published with the next beat (no round trip here: it
        changes at every decoding step)."""
        with self._lock:
            self.info = msgspec.structs.replace(self.info, running=running, free_slots=free_slots, kv_tokens=kv_tokens)

    def beat(self) -> None:
        now = time.time()
        with self._lock:
            self.info = msgspec.structs.replace(self.info, heartbeat_at=now)
            info = self.info
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(keys.worker_info(info.id), encode_info(info), px=int(self.ttl_s * 1000))
                pipe.zadd(keys.WORKERS, {info.id: now})
                if self.metrics is not None:
                    pipe.set(keys.worker_metrics(info.id), self.metrics(), px=int(self.ttl_s * 1000))
                pipe.execute()
        except RedisError as exc:
            log.warning("heartbeat failed (Redis unreachable?): %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.beat()
            if self.on_beat is not None:
                try:
                    self.on_beat()
                except Exception:
                    log.debug("heartbeat callback failed", exc_info=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop beating; the record expires by itself (a failed start stays visible until then)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.period_s + 1)

    def leave(self) -> None:
        """Stop beating and remove the record: the API stops routing here immediately."""
        self.stop()
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(keys.worker_info(self.info.id))
                pipe.zrem(keys.WORKERS, self.info.id)
                pipe.execute()
        except RedisError:
            log.warning("could not remove the worker record; it expires in %.0f s", self.ttl_s)
