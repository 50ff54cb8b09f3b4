"""GET /v1/models: the served model names (MODEL_NAME first, then its aliases)."""

from __future__ import annotations

from litestar import Controller, get

from api.ops.protocol import ModelList
from api.ops.service import OpsService


class ModelsController(Controller):
    path = "/v1/models"
    tags = ["models"]

    @get("", summary="List models")
    async def list_models(self, ops_service: OpsService) -> ModelList:
        return ops_service.models()
