"""Token streaming from inside a batched `generate`: each streaming row's new text, as it grows.

`DeltaTracker` turns a row's tokens-so-far into the text that is safe to send: never the start
of a stop string that may still complete (the last len(stop)-1 characters wait), never half a
UTF-8 character, and nothing after a stop string or the end. Text sent is always a prefix of the
row's final text, so the deltas add up to exactly the non-streamed answer. `DeltaPublisher` writes
deltas to Redis from its own thread, so the decoding loop never waits on the network.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence

from redis import Redis
from redis.exceptions import RedisError

from shared import keys

log = logging.getLogger("omega.worker.streaming")
STREAM_TTL_S = 600
STREAM_MAXLEN = 10_000


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest of `stops` it contains, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class DeltaTracker:
    """What one streaming row has sent, and what it may send next."""

    def __init__(self, stops: Sequence[str], eos_ids: Sequence[int], decode: Callable[[list[int]], str]) -> None:
        self.stops = tuple(stops)
        self.eos = set(eos_ids)
        self.decode = decode
        self.holdback = max((len(s) for s in self.stops), default=1) - 1
        self.tokens: list[int] = []
        self.sent = ""
        self.closed = False

    def _visible(self) -> tuple[str, bool]:
        """(text so far, ended by a stop string or EOS)."""
        end = next((i for i, t in enumerate(self.tokens) if t in self.eos), None)
        text = self.decode(self.tokens if end is None else self.tokens[:end])
        text, stopped = cut_at_stop(text, self.stops)
        return text, stopped or end is not None

    def push(self, token: int) -> str:
        """Add one generated token; returns the new text that may be sent now ('' if none)."""
        if self.closed:
            return ""
        self.tokens.append(token)
        text, ended = self._visible()
        if ended:
            self.closed = True
            safe = text
        else:
            safe = text[: len(text) - self.holdback] if self.holdback else text
            safe = safe.rstrip("\ufffd")  # an incomplete multi-byte character: wait for the rest
        if not safe.startswith(self.sent) or len(safe) <= len(self.sent):
            return ""
        delta, self.sent = safe[len(self.sent) :], safe
        return delta

    def finish(self, final_text: str) -> str:
        """The rest of the final text (the engine's answer is the reference)."""
        self.closed = True
        if not final_text.startswith(self.sent):
            log.warning("streamed text diverged from the final text; sending only the final remainder")
            return ""
        delta, self.sent = final_text[len(self.sent) :], final_text
        return delta


class DeltaPublisher:
    """Writes (job id, delta) pairs to each job's Redis stream from a background thread."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        # Lives as long as the worker process (a daemon thread): nothing ever stops it.
        self._queue: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="delta-publisher", daemon=True)
        self._thread.start()

    def publish(self, job_id: str, delta: str) -> None:
        if delta:
            self._queue.put((job_id, delta))

    def _drain(self, first: tuple[str, str]) -> list[tuple[str, str]]:
        batch = [first]
        while len(batch) < 512:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._drain(self._queue.get())
            try:
                with self.redis.pipeline(transaction=False) as pipe:
                    for job_id, delta in batch:
                        key = keys.job_stream(job_id)
                        pipe.xadd(key, {"d": delta.encode()}, maxlen=STREAM_MAXLEN, approximate=True)
                        pipe.expire(key, STREAM_TTL_S)
                    pipe.execute()
            except RedisError as exc:  # the final text still arrives with the result
                log.warning("could not publish %d stream delta(s): %s", len(batch), exc)

