"""OpenAI Batch API: POST /v1/batches, GET /v1/batches[/{id}], POST /v1/batches/{id}/cancel."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from api.batches.protocol import BatchCreate, BatchList, BatchObject
from api.batches.service import BatchService


class BatchesController(Controller):
    path = "/v1/batches"
    tags = ["batches"]

    @post("", status_code=200, summary="Create a batch from an uploaded JSONL file")
    async def create(self, data: JSONBody[BatchCreate], batch_service: NamedDependency[BatchService]) -> BatchObject:
        return await batch_service.create(data.input_file_id, data.endpoint, data.completion_window, data.metadata)

    @get("", summary="List batches, newest first")
    async def list_batches(
        self,
        batch_service: NamedDependency[BatchService],
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=100)] = 20,
        after: Annotated[str | None, QueryParameter(name="after")] = None,
    ) -> BatchList:
        return await batch_service.list(limit, after)

    @get("/{batch_id:str}", summary="A batch's state and counts")
    async def read(self, batch_id: FromPath[str], batch_service: NamedDependency[BatchService]) -> BatchObject:
        return await batch_service.get(batch_id)

    @post("/{batch_id:str}/cancel", status_code=200, summary="Cancel a batch")
    async def cancel(self, batch_id: FromPath[str], batch_service: NamedDependency[BatchService]) -> BatchObject:
        return await batch_service.cancel(batch_id)
