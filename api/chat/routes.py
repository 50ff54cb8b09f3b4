"""POST /v1/chat/completions (OpenAI-compatible, synchronous or SSE) and POST /generate (TGI's shape).

/generate lives in the chat slice: it is the same submit-and-wait path with sampling parameters
converted beside chat's (api/chat/convert.py) and the same request log; only the wire shape differs.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody
from litestar.response import Stream

from api.chat.protocol import ChatCompletion, ChatCompletionRequest, GenerateRequest, GenerateResponse
from api.chat.service import ChatService
from api.chat.streaming import EventStream


class ChatController(Controller):
    path = "/v1/chat/completions"
    tags = ["chat"]

    @post("", status_code=200, summary="Create a chat completion (OpenAI-compatible; stream=true for SSE)")
    async def create(
        self,
        data: JSONBody[ChatCompletionRequest],
        chat_service: NamedDependency[ChatService],
        request: Request[Any, Any, Any],
        idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key", max_length=255)] = None,
    ) -> ChatCompletion | Stream:
        if data.stream:
            return EventStream(await chat_service.stream(data))
        return await chat_service.complete(
            data, client_gone=lambda: client_gone(request), idempotency_key=idempotency_key
        )


async def client_gone(request: Request[Any, Any, Any]) -> None:
    """Returns once the client has closed the connection (the body was read already, so the next
    ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class GenerateController(Controller):
    path = "/generate"
    tags = ["generate"]

    @post("", status_code=200, summary="Generate from a raw prompt (no chat template)")
    async def generate(
        self,
        data: JSONBody[GenerateRequest],
        chat_service: NamedDependency[ChatService],
        request: Request[Any, Any, Any],
    ) -> GenerateResponse:
        return await chat_service.generate(data, client_gone=lambda: client_gone(request))
