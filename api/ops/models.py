"""GET /v1/models: the served model names (MODEL_NAME first, then its aliases)."""

from __future__ import annotations

from litestar import Controller, Request, get

from api.auth import require_api_key
from api.chat.protocol import ModelList, ModelObject


class ModelsController(Controller):
    path = "/v1/models"
    tags = ["models"]
    guards = [require_api_key]

    @get("", summary="List models")
    async def list_models(self, request: Request) -> ModelList:  # type: ignore[type-arg]
        settings = request.app.state.settings
        created = int(request.app.state.started_at)
        return ModelList(data=[ModelObject(id=name, created=created) for name in settings.served_model_names])
