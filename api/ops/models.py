"""GET /v1/models and /v1/models/{id}: the served model names (MODEL_NAME first, then its
aliases), each as OpenAI's model object; an unknown id is OpenAI's 404 model_not_found."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from api.ops.protocol import ModelList, ModelObject
from api.ops.service import OpsService
from shared.errors import ModelNotFound


def _cards(ops_service: OpsService) -> list[ModelObject]:
    created = int(ops_service.started_at)
    return [ModelObject(id=name, created=created) for name in ops_service.settings.served_model_names]


class ModelsController(Controller):
    path = "/v1/models"
    tags = ["models"]

    @get("", summary="List models")
    async def list_models(self, ops_service: NamedDependency[OpsService]) -> ModelList:
        return ModelList(data=_cards(ops_service))

    # `path`, not `str`: hub-style names ("org/name") hold a slash, and the OpenAI SDK sends them as is.
    @get("/{model_id:path}", summary="Retrieve a model")
    async def retrieve_model(self, model_id: FromPath[str], ops_service: NamedDependency[OpsService]) -> ModelObject:
        wanted = model_id.lstrip("/")
        for card in _cards(ops_service):
            if card.id == wanted:
                return card
        raise ModelNotFound(f"The model `{wanted}` does not exist", param="model")
