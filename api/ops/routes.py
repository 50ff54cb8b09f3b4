"""POST /v1/apply_template: the exact prompt text a worker feeds the model for these messages."""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import Provide

from api.auth import require_api_key
from api.chat.convert import check_model, image_refs, job_messages
from api.chat.protocol import ApplyTemplateRequest, ApplyTemplateResponse
from api.services import Services, get_services
from shared.errors import InvalidRequest, ServiceUnavailable
from shared.prompt import render_prompt


class TemplateController(Controller):
    path = "/v1/apply_template"
    tags = ["chat"]
    guards = [require_api_key]
    dependencies = {"svc": Provide(get_services, sync_to_thread=False)}

    @post("", status_code=200, summary="Render the chat template (no generation)")
    async def apply(self, data: ApplyTemplateRequest, svc: Services) -> ApplyTemplateResponse:
        model = check_model(data.model, svc.settings)
        refs = image_refs(data.messages)
        svc.intake.check_refs(refs)
        card = next((w.model for w in await svc.fleet.live_workers() if w.model is not None), None)
        if card is None:
            raise ServiceUnavailable("no worker has loaded the model yet; retry shortly", code="no_workers")
        if refs and not card.supports_images:
            raise InvalidRequest("this model does not accept images", param="messages", code="images_not_supported")
        # Images only need their place in the template, not their bytes.
        messages = job_messages(data.messages, ["template"] * len(refs))
        return ApplyTemplateResponse(
            prompt=render_prompt(card.chat_template, card.template_kwargs, messages), model=model
        )
