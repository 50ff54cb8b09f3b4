"""Watching for cancellations of the rows a worker is generating.

The API records a cancel request (DELETE /v1/jobs/{id}, or a streaming client that went away)
in one sorted set. While a micro-batch runs, one long-lived thread asks Redis about exactly
that micro-batch's jobs every 50 ms: a single ZMSCORE, one small round trip per period. A
canceled row then stops within about one period instead of one fleet heartbeat (half a second
or more, by which time a short generation has often finished anyway). Between micro-batches the
thread sleeps, so an idle worker sends nothing and a short micro-batch costs nothing but two
lock operations.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from redis import Redis

from shared import keys

log = logging.getLogger("omega.worker.cancel")
CANCEL_POLL_S = 0.05


class CancelWatch:
    def __init__(self, redis: Redis, on_cancel: Callable[[list[str]], None], period_s: float = CANCEL_POLL_S):
        self.redis = redis
        self.on_cancel = on_cancel
        self.period_s = period_s
        self._cond = threading.Condition()
        self._ids: list[str] = []
        self._told: set[str] = set()  # ids passed on already, while still watched
        self._thread: threading.Thread | None = None

    def watch(self, job_ids: Sequence[str]) -> None:
        """Watch exactly `job_ids` from now on (the continuous worker calls this whenever its
        rows change); an id already passed on is not passed on again."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="cancel-watch", daemon=True)
                self._thread.start()
            self._told &= set(job_ids)
            self._ids = [i for i in job_ids if i not in self._told]
            self._cond.notify_all()

    @contextmanager
    def watching(self, job_ids: Sequence[str]) -> Iterator[None]:
        """Pass on cancel requests for job_ids (each once) until the block ends."""
        self.watch(job_ids)
        try:
            yield
        finally:
            self.watch([])

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._ids))
                # One period between polls, whatever changes meanwhile (the continuous worker's set
                # changes every few steps); an emptied set ends the wait.
                self._cond.wait_for(lambda: not self._ids, timeout=self.period_s)
                ids = list(self._ids)
            if not ids:
                continue
            canceled = self._requested(ids)
            if not canceled:
                continue
            with self._cond:
                canceled = [i for i in canceled if i in self._ids]  # still watched: not finished meanwhile
                if not canceled:
                    continue
                self._told.update(canceled)
                self._ids = [i for i in self._ids if i not in canceled]
                self.on_cancel(canceled)

    def _requested(self, job_ids: list[str]) -> list[str]:
        try:
            scores = self.redis.zmscore(keys.CANCEL_REQUESTS, job_ids)
        except Exception:  # Redis away: generation goes on, the next period asks again
            log.debug("could not read cancellation requests", exc_info=True)
            return []
        return [job_id for job_id, score in zip(job_ids, scores, strict=True) if score is not None]
