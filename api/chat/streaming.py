"""`stream: true`: Server-Sent Events of OpenAI `chat.completion.chunk` objects.

The worker writes each streaming row's new text to the job's Redis stream as it is generated;
this reads that stream and the job's results stream in one blocking XREAD, so text is forwarded
as soon as it exists and the end is seen at once. The final result carries the whole text: if a
delta was lost or late, the remainder is sent from it, so the streamed text always equals the
non-streamed answer. A client that goes away gets its job canceled: the row stops generating.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from redis.exceptions import RedisError

from api.chat.protocol import ChatCompletionChunk, ChoiceDelta, ChunkChoice, Usage
from api.jobs.service import JobService
from shared import keys
from shared.contract import JobError, JobPayload, JobResult
from shared.queue import names
from shared.queue.outcomes import parse_entry
from shared.redis_text import text as as_text
from shared.settings import Settings

log = logging.getLogger("omega.api.streaming")
KEEPALIVE_S = 15.0
DONE = b"data: [DONE]\n\n"
_background: set[asyncio.Task[None]] = set()


class EventStream(Stream):
    """A text/event-stream response. Litestar 2.x lets the route's JSON media type win over the
    one set on a Stream, despite its docs; this keeps ours."""

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        super().__init__(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        kwargs["media_type"] = self.media_type
        return super().to_asgi_response(*args, **kwargs)


def sse(payload: Any) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


class ChatStream:
    def __init__(
        self,
        settings: Settings,
        blocking_redis: Any,
        jobs: JobService,
        payload: JobPayload,
        model: str,
        include_usage: bool,
    ) -> None:
        self.settings = settings
        self.redis = blocking_redis
        self.jobs = jobs
        self.job_id = payload.id
        self.include_usage = include_usage
        self.completion_id = f"chatcmpl-{payload.id}"
        self.created = int(payload.created_at)
        self.model = model
        self.sent = ""
        self.finished = False

    def _event(self, choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
        chunk = ChatCompletionChunk(id=self.completion_id, created=self.created, model=self.model, choices=choices)
        if self.include_usage:
            chunk.usage = usage  # null on every chunk but the last
        return sse(chunk)

    def _chunk(self, delta: ChoiceDelta, finish_reason: str | None = None) -> bytes:
        return self._event([ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)])

    def _ending(self, outcome: JobResult | JobError) -> list[bytes]:
        if isinstance(outcome, JobError):
            return [sse(outcome.body()), DONE]
        out = []
        if outcome.text.startswith(self.sent) and len(outcome.text) > len(self.sent):
            out.append(self._chunk(ChoiceDelta(content=outcome.text[len(self.sent) :])))
        out.append(self._chunk(ChoiceDelta(), outcome.finish_reason))
        if self.include_usage:
            usage = Usage(
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
                total_tokens=outcome.prompt_tokens + outcome.completion_tokens,
            )
            out.append(self._event([], usage))
        out.append(DONE)
        return out

    async def events(self) -> AsyncIterator[bytes]:
        deltas, results = keys.job_stream(self.job_id), names.results_key(self.job_id)
        positions = {deltas: "0-0", results: "0-0"}
        deadline = time.monotonic() + self.settings.request_timeout_s
        try:
            yield self._chunk(ChoiceDelta(role="assistant", content=""))
            while (left := deadline - time.monotonic()) > 0:
                try:
                    reply = await asyncio.wait_for(
                        self.redis.xread(positions, block=int(min(left, KEEPALIVE_S) * 1000)),
                        min(left, KEEPALIVE_S) + 5,
                    )
                except (RedisError, TimeoutError):
                    await asyncio.sleep(1)  # Redis restarting: the job is safe; keep waiting
                    continue
                if not reply:
                    yield b": keep-alive\n\n"
                    continue
                for key, entries in sorted(reply, key=lambda r: as_text(r[0]) != deltas):  # deltas first
                    for entry_id, fields in entries:
                        positions[as_text(key)] = as_text(entry_id)
                        if as_text(key) == deltas:
                            text = as_text(fields.get(b"d", b""))
                            self.sent += text
                            yield self._chunk(ChoiceDelta(content=text))
                            continue
                        outcome = parse_entry(self.job_id, as_text(entry_id), fields)
                        if outcome is not None:
                            self.finished = True
                            for event in self._ending(outcome):
                                yield event
                            return
            timeout = JobError(
                status=504,
                type="timeout_error",
                code="timeout",
                message=f"no result within {self.settings.request_timeout_s:g} s (job {self.job_id})",
            )
            yield sse(timeout.body())
            yield DONE
        finally:
            if not self.finished:
                # The client went away (or timed out): stop the row instead of generating for nobody.
                task = asyncio.get_running_loop().create_task(self.jobs.stop(self.job_id))
                _background.add(task)
                task.add_done_callback(_background.discard)
