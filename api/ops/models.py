"""GET /v1/models: the served model names (MODEL_NAME first, then its aliases)."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency

from api.ops.protocol import ModelList, ModelObject
from api.ops.service import OpsService


class ModelsController(Controller):
    path = "/v1/models"
    tags = ["models"]

    @get("", summary="List models")
    async def list_models(self, ops_service: NamedDependency[OpsService]) -> ModelList:
        settings = ops_service.settings
        created = int(ops_service.started_at)
        return ModelList(data=[ModelObject(id=name, created=created) for name in settings.served_model_names])
