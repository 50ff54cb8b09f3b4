"""POST /v1/chat/completions (OpenAI-compatible, synchronous or SSE) and POST /generate (TGI's shape).

/generate lives in the chat slice: it is the same submit-and-wait path with sampling parameters
converted beside chat's (api/chat/convert.py) and the same request log; only the wire shape differs.
"""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from api.chat.protocol import ChatCompletion, ChatCompletionRequest, GenerateRequest, GenerateResponse
from api.chat.service import ChatService
from api.chat.streaming import EventStream


class ChatController(Controller):
    path = "/v1/chat/completions"
    tags = ["chat"]

    @post("", status_code=200, summary="Create a chat completion (OpenAI-compatible; stream=true for SSE)")
    async def create(
        self, data: JSONBody[ChatCompletionRequest], chat_service: NamedDependency[ChatService]
    ) -> ChatCompletion | Stream:
        if data.stream:
            return EventStream(await chat_service.stream(data))
        return await chat_service.complete(data)


class GenerateController(Controller):
    path = "/generate"
    tags = ["generate"]

    @post("", status_code=200, summary="Generate from a raw prompt (no chat template)")
    async def generate(
        self, data: JSONBody[GenerateRequest], chat_service: NamedDependency[ChatService]
    ) -> GenerateResponse:
        return await chat_service.generate(data)
