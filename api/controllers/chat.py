"""POST /v1/chat/completions: the OpenAI-compatible synchronous path."""

from __future__ import annotations

import time

from litestar import Controller, post
from litestar.di import Provide

from api.auth import require_api_key
from api.chat_jobs import build_chat_job, completion
from api.protocol import ChatCompletion, ChatCompletionRequest
from api.request_log import log_success
from api.services import Services, get_services
from shared.contract import JobMeta


class ChatController(Controller):
    path = "/v1/chat/completions"
    tags = ["chat"]
    guards = [require_api_key]
    dependencies = {"svc": Provide(get_services, sync_to_thread=False)}

    @post("", status_code=200, summary="Create a chat completion (OpenAI-compatible)")
    async def create(self, data: ChatCompletionRequest, svc: Services) -> ChatCompletion:
        started = time.perf_counter()
        payload, model = await build_chat_job(data, svc.settings, svc.intake, svc.fleet)
        result = await svc.dispatcher.run(payload, JobMeta(model=model, created_at=payload.created_at))
        latency = time.perf_counter() - started
        log_success("chat", payload.id, latency, model, result, payload.params)
        return completion(payload.id, model, result, latency, created=payload.created_at)
