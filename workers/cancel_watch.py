"""Watching for cancellations of the rows a worker is generating.

The API records a cancel request (DELETE /v1/jobs/{id}, or a streaming client that went away)
in one sorted set. While a batch runs, one thread asks Redis about exactly that batch's jobs
every 50 ms: a single ZMSCORE, one small round trip per period. A canceled row then stops within
about one period instead of one fleet heartbeat (half a second or more, by which time a short
generation has often finished anyway).
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

    def check(self, job_ids: Sequence[str]) -> list[str]:
        """The ids among job_ids that someone asked to cancel; passed on to on_cancel."""
        if not job_ids:
            return []
        try:
            scores = self.redis.zmscore(keys.CANCEL_REQUESTS, list(job_ids))
        except Exception:  # Redis away: generation goes on, the next check asks again
            log.debug("could not read cancellation requests", exc_info=True)
            return []
        canceled = [job_id for job_id, score in zip(job_ids, scores, strict=True) if score is not None]
        if canceled:
            self.on_cancel(canceled)
        return canceled

    @contextmanager
    def watching(self, job_ids: Sequence[str]) -> Iterator[None]:
        """Check job_ids every period until the block ends; each id is passed on once."""
        done = threading.Event()
        pending = list(job_ids)

        def loop() -> None:
            while pending and not done.wait(self.period_s):
                for job_id in self.check(pending):
                    pending.remove(job_id)

        thread = threading.Thread(target=loop, name="cancel-watch", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=1.0)
