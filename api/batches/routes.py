"""OpenAI Batch API: POST /v1/batches, GET /v1/batches[/{id}], POST /v1/batches/{id}/cancel."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.di import Provide
from litestar.params import Parameter

from api.auth import require_api_key
from api.batches.protocol import BatchList, BatchObject
from api.services import Services, get_services


class BatchCreate(msgspec.Struct, kw_only=True):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


class BatchesController(Controller):
    path = "/v1/batches"
    tags = ["batches"]
    guards = [require_api_key]
    dependencies = {"svc": Provide(get_services, sync_to_thread=False)}

    @post("", status_code=200, summary="Create a batch from an uploaded JSONL file")
    async def create(self, data: BatchCreate, svc: Services) -> BatchObject:
        return await svc.batches.create(data.input_file_id, data.endpoint, data.completion_window, data.metadata)

    @get("", summary="List batches, newest first")
    async def list_batches(
        self,
        svc: Services,
        limit: Annotated[int, Parameter(query="limit", ge=1, le=100)] = 20,
        after: Annotated[str | None, Parameter(query="after")] = None,
    ) -> BatchList:
        return await svc.batches.list(limit, after)

    @get("/{batch_id:str}", summary="A batch's state and counts")
    async def read(self, batch_id: str, svc: Services) -> BatchObject:
        return await svc.batches.get(batch_id)

    @post("/{batch_id:str}/cancel", status_code=200, summary="Cancel a batch")
    async def cancel(self, batch_id: str, svc: Services) -> BatchObject:
        return await svc.batches.cancel(batch_id)
