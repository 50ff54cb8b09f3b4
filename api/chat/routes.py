"""POST /v1/chat/completions: the OpenAI-compatible synchronous path."""

from __future__ import annotations

import time

from litestar import Controller, post
from litestar.di import Provide
from litestar.response import Stream

from api.auth import require_api_key
from api.chat.protocol import ChatCompletion, ChatCompletionRequest
from api.chat.request_log import log_success
from api.chat.service import build_chat_job, completion
from api.chat.streaming import ChatStream, EventStream
from api.services import Services, get_services
from shared.contract import JobMeta


class ChatController(Controller):
    path = "/v1/chat/completions"
    tags = ["chat"]
    guards = [require_api_key]
    dependencies = {"svc": Provide(get_services, sync_to_thread=False)}

    @post("", status_code=200, summary="Create a chat completion (OpenAI-compatible; stream=true for SSE)")
    async def create(self, data: ChatCompletionRequest, svc: Services) -> ChatCompletion | Stream:
        started = time.perf_counter()
        payload, model = await build_chat_job(data, svc.settings, svc.intake, svc.fleet, streaming=bool(data.stream))
        meta = JobMeta(model=model, created_at=payload.created_at)
        if data.stream:
            # Enqueued before the response starts: a full queue is still a plain 503, not an event.
            await svc.dispatcher.submit(payload, meta, svc.settings.result_ttl_s)
            include_usage = bool(data.stream_options and data.stream_options.include_usage)
            events = ChatStream(svc.settings, svc.dispatcher.blocking_redis, svc.jobs, payload, model, include_usage)
            return EventStream(events.events())
        result = await svc.dispatcher.run(payload, meta)
        latency = time.perf_counter() - started
        log_success("chat", payload.id, latency, model, result, payload.params)
        return completion(payload.id, model, result, latency, created=payload.created_at)
