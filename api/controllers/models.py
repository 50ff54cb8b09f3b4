"""GET /v1/models and /v1/models/{id}: the served model names (MODEL_NAME first, then its
aliases), each as OpenAI's model object; an unknown id is OpenAI's 404 model_not_found."""

from __future__ import annotations

from litestar import Controller, Request, get

from api.auth import require_api_key
from api.protocol import ModelList, ModelObject
from shared.errors import ModelNotFound


def _cards(request: Request) -> list[ModelObject]:  # type: ignore[type-arg]
    settings = request.app.state.settings
    created = int(request.app.state.started_at)
    return [ModelObject(id=name, created=created) for name in settings.served_model_names]


class ModelsController(Controller):
    path = "/v1/models"
    tags = ["models"]
    guards = [require_api_key]

    @get("", summary="List models")
    async def list_models(self, request: Request) -> ModelList:  # type: ignore[type-arg]
        return ModelList(data=_cards(request))

    # `path`, not `str`: hub-style names ("org/name") hold a slash, and the OpenAI SDK sends them as is.
    @get("/{model_id:path}", summary="Retrieve a model")
    async def retrieve_model(self, request: Request, model_id: str) -> ModelObject:  # type: ignore[type-arg]
        wanted = model_id.lstrip("/")
        for card in _cards(request):
            if card.id == wanted:
                return card
        raise ModelNotFound(f"The model `{wanted}` does not exist", param="model")
